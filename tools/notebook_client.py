"""nbclient's NotebookClient without its stall after a cell with an Output widget.

Every tool that runs the notebooks headless uses :class:`NotebookClient` from here: the course site
(tools/build_site.py), the timing run (bench/notebook_time.py) and the quick-mode notebook tests.

The stall. nbclient waits for a cell's `execute_reply` with one `shell_channel.get_msg(timeout)`,
a poll on the shell socket. While it waits, its stand-in for an ipywidgets Output widget answers
the kernel's `clear_output` by sending the widget's state back on that same socket
(`nbclient.output_widget.OutputWidget.sync_state`). A send on a ZMQ socket can consume the edge of
the socket's file descriptor that would have announced the reply, so when the reply lands during
that send the poll is never woken: it returns only when its timeout expires, then finds the reply
waiting. (The kernel side of ipykernel 7 had the same race, fixed by sending through the stream:
ipython/ipykernel#1529.) Measured here with nbclient 0.11, jupyter_client 8.10, pyzmq 27.3,
ipykernel 7.4: notebook 01 in quick mode, 12 runs at a 40 s cell limit, the cell after the
widget viewer waited 39.7 s in 4 of them; with no limit (`make docs`) the build hung for good.

The fix here. The shell channel's `get_msg(timeout)` is replaced by a loop of polls of at most
`POLL_SLICE` seconds until the same deadline (or forever, for no timeout). Every expired poll
checks the socket again, so a missed wake-up costs at most one slice; a reply that does not come
still times out after the cell's limit, as before.
"""
from __future__ import annotations

import time
from queue import Empty

import nbclient

POLL_SLICE = 0.5      # seconds: the most a missed wake-up can cost


def sliced(get_msg, slice_s: float = POLL_SLICE):
    """`get_msg(timeout)` of a jupyter_client async channel, as polls of at most `slice_s` seconds
    until the deadline `timeout` seconds away (None: no deadline). Raises Empty at the deadline."""
    async def sliced_get_msg(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await get_msg(slice_s if left is None else min(slice_s, left))
            except Empty:
                if left is not None and left <= slice_s:
                    raise
    return sliced_get_msg


class NotebookClient(nbclient.NotebookClient):
    """nbclient.NotebookClient whose shell-channel waits are :func:`sliced` (see the module)."""

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        kc.shell_channel.get_msg = sliced(kc.shell_channel.get_msg)
        return kc
