"""tools/notebook_client.py: the shell channel's wait for a reply, as short polls to the same deadline.

The race it works around (a reply whose wake-up was consumed by nbclient's own send on the shell
socket) cannot be forced on demand; what can be tested exactly is that the sliced wait finds a reply
that a long poll would have slept past, never polls longer than a slice, and still raises Empty at
the caller's deadline."""
import asyncio
import sys
import time
from pathlib import Path
from queue import Empty

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from notebook_client import NotebookClient, sliced  # noqa: E402


class MissedWakeUp:
    """A channel whose reply is in the socket at `ready_at` but whose poll is never woken: a poll
    returns it only once the poll's own timeout expires after that time (what pyzmq does)."""

    def __init__(self, ready_at: float):
        self.ready_at, self.timeouts = time.monotonic() + ready_at, []

    async def get_msg(self, timeout=None):
        self.timeouts.append(timeout)
        assert timeout is not None, "an unbounded poll never sees a missed reply"
        await asyncio.sleep(timeout)
        if time.monotonic() >= self.ready_at:
            return {"msg_type": "execute_reply"}
        raise Empty


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_missed_reply_costs_at_most_one_slice(timeout):
    ch = MissedWakeUp(ready_at=0.12)
    t0 = time.monotonic()
    msg = asyncio.run(sliced(ch.get_msg, slice_s=0.05)(timeout))
    took = time.monotonic() - t0
    assert msg["msg_type"] == "execute_reply"
    assert took < 0.12 + 0.05 + 0.1, f"took {took:.3f} s for a reply ready at 0.12 s"   # not 30 s
    assert max(ch.timeouts) <= 0.05 and len(ch.timeouts) >= 3


def test_no_reply_still_times_out_at_the_deadline():
    ch = MissedWakeUp(ready_at=1e9)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(sliced(ch.get_msg, slice_s=0.05)(0.2))
    took = time.monotonic() - t0
    assert 0.2 <= took < 0.35 and max(ch.timeouts) <= 0.05


def test_the_client_slices_its_shell_channel(tmp_path):
    """A real kernel: the client the tools use has the sliced wait on its shell channel only."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    client = NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    seen = {}

    def on_cell_start(cell, cell_index):
        seen["shell"] = client.kc.shell_channel.get_msg.__name__
        seen["iopub"] = client.kc.iopub_channel.get_msg.__name__
    client.on_cell_start = on_cell_start
    client.execute()
    assert nb.cells[0].outputs[0]["text"] == "42\n"
    assert seen == {"shell": "sliced_get_msg", "iopub": "get_msg"}
