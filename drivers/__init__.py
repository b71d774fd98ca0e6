"""Device drivers: one module per kind of device, registered by its config ``type:`` name."""
