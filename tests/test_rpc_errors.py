"""RPC that answers: a wrong key, a busy board, a dead tracker or something that is no tracker fail within their
time limits with one line that names what is wrong, through the library and the command line. A real tracker and
the real emulated board (tests/conftest.py), no mocks."""

import contextlib
import io
import subprocess
import sys
import time

import pytest

import bnn_tvm
from bnn_tvm import board, zoo
from bnn_tvm.runtime import load_remote

from .test_cli import CASE, bnn_tvm as cli

# Beyond the time limit under test: a tracker's answer takes milliseconds; a fresh CLI process imports TVM.
MARGIN_S = 3.0
CLI_START_S = 20.0


@pytest.fixture(scope="module")
def arm_so(tmp_path_factory):
    so = tmp_path_factory.mktemp("rpc") / "model-aarch64.so"
    bnn_tvm.compile(zoo.cached_tflite(CASE), target="rpi4").export_library(so)
    return so


def dead_tracker() -> str:
    return f"127.0.0.1:{board.free_port()}"


def failure(call) -> tuple[str, float]:
    """The BoardError's message and the seconds ``call`` took to raise it."""
    start = time.monotonic()
    with pytest.raises(board.BoardError) as info:
        call()
    seconds, message = time.monotonic() - start, str(info.value)
    # Its traceback holds this frame and so the caller's: a session the test holds would outlive it until the
    # garbage collector runs, keeping the one board busy for the tests after it.
    del info
    return message, seconds


def test_wrong_key_fails_at_once_naming_the_key_and_what_the_tracker_serves(emulated_board, arm_so):
    tracker, key = emulated_board
    message, seconds = failure(lambda: board.request_session(tracker, "wrong", timeout=5))
    assert seconds < 5 + MARGIN_S
    assert message.startswith(f"no board of key 'wrong' is registered at the RPC tracker {tracker}; "
                              f"it serves: '{key}' (1 board, "), message
    message, seconds = failure(lambda: load_remote(arm_so, tracker, "wrong", timeout=5))
    assert seconds < 5 + MARGIN_S and "'wrong'" in message and f"'{key}'" in message
    assert "'wrong'" in failure(lambda: board.check_key_served(tracker, "wrong"))[0]
    assert board.check_key_served(tracker, key) == 1


def test_busy_board_fails_after_the_timeout_and_serves_again(emulated_board, arm_so):
    tracker, key = emulated_board
    held = board.request_session(tracker, key, timeout=30)
    try:
        message, seconds = failure(lambda: board.request_session(tracker, key, timeout=3))
    finally:
        del held
    assert 3 <= seconds < 3 + MARGIN_S
    assert message == (f"no board of key '{key}' at the RPC tracker {tracker} became free within 3 s; "
                       f"it serves: '{key}' (1 board, 0 free)")
    # The withdrawn request does not take the board: the next one gets it.
    assert load_remote(arm_so, tracker, key, timeout=30).threads() >= 1


def test_a_called_remote_model_gives_the_board_back_when_dropped(emulated_board, arm_so):
    # One board: each call needs the session the previous model held to have closed with it, without waiting
    # for the garbage collector (TVM's VirtualMachine.get_outputs leaves a reference cycle holding the VM).
    tracker, key = emulated_board
    x = zoo.random_input((1, CASE.size, CASE.size, CASE.channels_in))
    outputs = [load_remote(arm_so, tracker, key, timeout=5)(x) for _ in range(3)]
    assert all((y == outputs[0]).all() for y in outputs)


def test_dead_tracker_fails_at_once_naming_host_and_port(arm_so):
    tracker = dead_tracker()
    message, seconds = failure(lambda: board.request_session(tracker, "rpi4", timeout=30))
    assert seconds < MARGIN_S
    assert message == f"cannot reach the RPC tracker at {tracker}: connection refused"
    message, seconds = failure(lambda: load_remote(arm_so, tracker, "rpi4"))
    assert seconds < MARGIN_S and message == f"cannot reach the RPC tracker at {tracker}: connection refused"
    assert failure(lambda: board.check_key_served(tracker, "rpi4"))[0] == message


def test_a_port_that_is_no_tracker_fails_at_once(emulated_board):
    tracker, key = emulated_board
    host, port = board.parse_address(tracker)
    (_, board_port), = board.registered_boards(host, port, key)  # the board's RPC server speaks another protocol
    message, seconds = failure(lambda: board.request_session(f"127.0.0.1:{board_port}", key))
    assert seconds < board.TRACKER_TIMEOUT + MARGIN_S
    assert message.startswith(f"cannot reach the RPC tracker at 127.0.0.1:{board_port}: it is not an RPC tracker")


def test_tracker_without_boards_says_so():
    port = board.free_port()
    board.start_tracker(port)
    try:
        message, seconds = failure(lambda: board.request_session(f"127.0.0.1:{port}", "rpi4", timeout=5))
    finally:
        board.stop_tracker(port)
    assert seconds < MARGIN_S
    assert message == f"no board of key 'rpi4' is registered at the RPC tracker 127.0.0.1:{port}; it serves no board"


_RETRY_PROBE = """
import sys
from bnn_tvm import board
if sys.argv[1] == "quiet":
    board.quiet_rpc_logging()  # before TVM is imported, as the CLI calls it
from tvm.rpc import base
try:
    base.connect_with_retry(("127.0.0.1", int(sys.argv[2])), timeout=0.1, retry_period=0.2)
except RuntimeError as err:
    print(err)
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_quiet_rpc_logging_hides_tvms_retry_warnings(mode):
    done = subprocess.run([sys.executable, "-c", _RETRY_PROBE, mode, str(board.free_port())], capture_output=True,
                          text=True, timeout=120)
    assert "Failed to connect to server" in done.stdout, done.stdout + done.stderr
    assert ("retry in" in done.stderr) == (mode == "verbose"), done.stderr


def only_error_line(done) -> str:
    """The CLI's stderr, checked to be one ``error:`` line and nothing else (no traceback, no TVM warning)."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr and "retry" not in done.stderr
    return lines[0]


def timed_cli(*args):
    start = time.monotonic()
    done = cli(*args)
    return done, time.monotonic() - start


def test_cli_run_with_a_dead_tracker_prints_one_error_line(arm_so):
    tracker = dead_tracker()
    done, seconds = timed_cli("run", str(arm_so), "--rpc-tracker", tracker, "--rpc-key", "rpi4")
    line = only_error_line(done)
    assert f"cannot reach the RPC tracker at {tracker}: connection refused" in line
    assert seconds < CLI_START_S  # TVM's own client retried for 60 s


def test_cli_run_with_a_wrong_key_prints_one_error_line(emulated_board, arm_so):
    tracker, key = emulated_board
    done, seconds = timed_cli("run", str(arm_so), "--rpc-tracker", tracker, "--rpc-key", "wrong")
    line = only_error_line(done)
    assert f"no board of key 'wrong' is registered at the RPC tracker {tracker}; it serves: '{key}' (1 board" in line
    assert seconds < CLI_START_S  # TVM's own client waited for ever


def _cli_has_rpc_timeout() -> bool:
    from bnn_tvm.cli import build_parser

    with contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(["run", "m.so", "--rpc-timeout", "3"])
        except SystemExit:
            return False
    return True


@pytest.mark.skipif(not _cli_has_rpc_timeout(), reason="needs `bnn-tvm run --rpc-timeout SECONDS` (issue 20), "
                                                        "passed as load_remote(..., timeout=args.rpc_timeout)")
def test_cli_run_on_a_busy_board_fails_after_rpc_timeout(emulated_board, arm_so):
    tracker, key = emulated_board
    held = board.request_session(tracker, key, timeout=30)
    try:
        done, seconds = timed_cli("run", str(arm_so), "--rpc-tracker", tracker, "--rpc-key", key,
                                  "--rpc-timeout", "3")
    finally:
        del held
    line = only_error_line(done)
    assert f"no board of key '{key}' at the RPC tracker {tracker} became free within 3 s; it serves: '{key}' " \
           f"(1 board, 0 free)" in line
    assert 3 <= seconds < 3 + CLI_START_S
