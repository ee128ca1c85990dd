"""Session-wide test setup.

Several tests send SIGINT to an `mlc` subprocess and expect exit 130. A process started in the
background by a non-interactive shell (`make test &`, nohup) inherits SIGINT as ignored, and so would
every `mlc` it starts, which then never sees the signal. The test process takes SIGINT back (a Python
handler is reset to the default in children on exec), so those tests do not depend on how pytest
itself was started.
"""

from __future__ import annotations

import signal

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
