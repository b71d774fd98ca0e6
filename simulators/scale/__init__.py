"""A simulated scale on a serial port (a pty) and on TCP, for driver tests and the demo.

It speaks one protocol per instance, the way a scale is configured for one: MT-SICS (Mettler
Toledo commands), SBI (Sartorius) or Toledo continuous output. The load follows a scenario a
test writes (:meth:`ScaleSimulator.place`), and the ground truth is kept for the test (every
:class:`Placement`, :meth:`ScaleSimulator.expected_weight`). :class:`Faults` a test can switch
on make it misbehave.

The parts, in the order a reading goes through them (each module's doc has the details):

- :mod:`.model`: what kind of scale it is (:class:`ScaleModel`) and its physics: load, ramp,
  zero and tare (:class:`ScaleState`), as pure functions of time.
- :mod:`.formats`: the wire formats of each protocol: commands cut from the bytes received,
  readings written as lines and frames. Pure.
- :mod:`.wires`: the byte streams: the pty end, a TCP connection.
- :mod:`.session`: one conversation: commands run in order and answered, readings streamed,
  every reply sent through the :class:`Faults`.
- :mod:`.simulator`: :class:`ScaleSimulator`, one scale on a serial port and/or TCP, with the
  scenario and its ground truth.

Everything is imported from here (``from simulators.scale import ScaleSimulator``).

No thread: the pty is a non-blocking fd on the event loop, TCP an asyncio server. Everything is
started by :meth:`ScaleSimulator.start` and undone by :meth:`ScaleSimulator.close` (or the
``async with`` block), so nothing outlives a test. A pulled cable (``NullModem.unplug``) ends the
serial conversation for good, as the EOF it is; TCP keeps serving.
"""

from simulators.scale.formats import CR as CR
from simulators.scale.formats import CRLF as CRLF
from simulators.scale.formats import ESC as ESC
from simulators.scale.formats import STX as STX
from simulators.scale.model import Placement as Placement
from simulators.scale.model import Reading as Reading
from simulators.scale.model import ScaleModel as ScaleModel
from simulators.scale.model import ScaleProtocol as ScaleProtocol
from simulators.scale.model import ScaleState as ScaleState
from simulators.scale.session import SPLIT_GAP as SPLIT_GAP
from simulators.scale.session import Faults as Faults
from simulators.scale.simulator import ScaleSimulator as ScaleSimulator
