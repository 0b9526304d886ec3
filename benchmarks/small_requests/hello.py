"""Hello-world Bottle on cheroot, same settings as wogit's build_server; N forked workers share one socket."""
import sys, os, socket, signal
import bottle
from cheroot import wsgi
app = bottle.Bottle()
@app.route("/<p:path>", method=["GET", "PUT"])
def hello(p=""):
    bottle.request.body.read()
    return "hello world\n"
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 32
workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
if os.environ.get("SWITCH"):
    sys.setswitchinterval(float(os.environ["SWITCH"]))

class Server(wsgi.Server):
    listener = None
    def bind(self, family, type, proto=0):
        if self.listener is None:
            return super().bind(family, type, proto)
        self.socket = self.listener
        self.bind_addr = self.listener.getsockname()[:2]
        return self.socket
    def prepare(self):
        super().prepare()
        if self.listener is not None:
            self.socket.setblocking(False)

def make(listener=None):
    server = Server(("127.0.0.1", 0), app, numthreads=threads, timeout=30.0, shutdown_timeout=30.0,
                    accepted_queue_timeout=1.0, request_queue_size=256)
    server.listener = listener
    # wogit's max_idle_connections (256); KA_LIMIT=default keeps cheroot's own 10
    ka = os.environ.get("KA_LIMIT", "256")
    if ka != "default":
        server.keep_alive_conn_limit = None if ka == "none" else int(ka)
    server.prepare()
    return server

if workers == 1:
    server = make()
    print(f"serving on http://127.0.0.1:{server.bind_addr[1]}", flush=True)
    server.serve()
else:
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(256)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            make(sock).serve()
            os._exit(0)
        pids.append(pid)
    print(f"serving on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(p, signal.SIGKILL) for p in pids] and os._exit(0))
    for p in pids: os.waitpid(p, 0)
