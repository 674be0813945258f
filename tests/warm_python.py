"""A warm Python for the tests' `bash run_all.sh` invocations (conftest sets PYTHON to its client for the session).

A new interpreter spends ~5 s on imports before a method's first step (torch, then the torch._dynamo that the first
optimizer imports), longer than a 2-epoch synthetic run trains; run_all.sh starts one per run, plan and report. Here
one server process imports all that once, and each `$PYTHON script args` of run_all.sh becomes a fork of it that
runs the script as __main__ with the caller's arguments, working directory, environment, standard input, output
and error (the client passes its file descriptors), and exits with the script's status; a signal sent to the client
(run_all.sh's `timeout` at a DEADLINE) goes on to the run. Anything else (`python -c ...`), or no server yet, runs the
real interpreter. Tests of what a real process does pass PYTHON themselves (test_reliability's run_all.sh test).

    python tests/warm_python.py serve ADDRESS        # the server (conftest starts it)
    python -S tests/warm_python.py ADDRESS ARGS...   # the client, as PYTHON (conftest writes a wrapper)

Only the standard library at the top: the client must start fast."""
import json
import os
import runpy
import signal
import socket
import struct
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_as_main(path, args):
    """Run the script at `path` as __main__ with `args`, as the interpreter's top level would (sys.path[0] its
    folder; SystemExit and uncaught exceptions as Python handles them: a string code goes to stderr with status 1, an
    exception prints its traceback); return the exit status."""
    sys.argv = [path, *map(str, args)]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    code = 1
    try:
        runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (as the top level: any exception ends the script with its traceback)
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(address):
    import torch  # what a new interpreter spends its seconds on, imported once
    sys.path.insert(0, ROOT)
    import common  # noqa: F401
    default_threads = torch.get_num_threads()  # a new interpreter's; no parallel region runs here, so a child may
    # take any number (a pool that ran before fork would hang the child's first parallel region)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401  (the report's plots)
    except ImportError:
        pass
    server = socket.socket(socket.AF_UNIX)
    server.bind(address + ".tmp")
    os.rename(address + ".tmp", address)  # a client connects once the server is ready, or runs the real interpreter
    server.listen(64)
    server.settimeout(1.0)
    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the children are reaped by the kernel
    while os.getppid() == parent:  # the test session's end (or its death) ends the server
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        if os.fork() == 0:
            code = 1
            try:
                server.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # (subprocess needs its children's statuses)
                code = child(conn, torch, default_threads)
            finally:
                os._exit(code)
        conn.close()


def child(conn, torch, default_threads):
    """Become the caller's `python script args`; return the script's exit status."""
    conn.settimeout(None)
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    (size,) = struct.unpack("!I", msg[:4])
    msg = msg[4:]
    while len(msg) < size:
        msg += conn.recv(1 << 20)
    request = json.loads(msg)
    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    threads = os.environ.get("OMP_NUM_THREADS", "")  # read by torch at its import: here set by hand
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else default_threads)
    # a script of another copy of the repository imports its own common.py, as a new interpreter would (a method
    # file looks beside itself, then one folder up), not the one imported here
    here = os.path.dirname(os.path.abspath(request["argv"][0]))
    own = [f for f in (os.path.join(here, "common.py"), os.path.join(os.path.dirname(here), "common.py"))
           if os.path.isfile(f)]
    if own and os.path.realpath(own[0]) != os.path.realpath(sys.modules["common"].__file__):
        del sys.modules["common"]
    conn.sendall(f"{os.getpid()}\n".encode())
    code = run_as_main(request["argv"][0], request["argv"][1:])
    conn.sendall(f"{code}\n".encode())
    return code


def client(address, argv):
    real = [sys.executable, *argv]  # (the client runs with -S; the real interpreter without it)
    if not argv or argv[0].startswith("-"):
        os.execv(sys.executable, real)
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(address)
    except OSError:  # no server (yet): the real interpreter
        os.execv(sys.executable, real)
    msg = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [struct.pack("!I", len(msg)) + msg], [0, 1, 2])
    lines = conn.makefile("r")
    pid = int(lines.readline())
    forwarded = []

    def forward(signum, _frame):
        forwarded.append(signum)
        os.kill(pid, signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    status = lines.readline()
    # a run ended by a signal reports no status: as a shell reports a process a signal killed
    sys.exit(int(status) if status else 128 + (forwarded[-1] if forwarded else signal.SIGKILL))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        client(sys.argv[1], sys.argv[2:])
