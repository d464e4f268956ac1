"""t2i_scripts.server, the scripts' HTTP client: any 2xx answer is a success (POST /feedback and
POST /fine-tunes answer 201), and any other status stops the script with the answer's body. A server is not
started on a port another process listens on: that one would answer in its place."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from t2i_scripts.server import ServerProcess, port_is_free

STATUSES = {"/fine-tunes": 201, "/generate": 200, "/bad": 422}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the name http.server calls)
        length = int(self.headers.get("Content-Length", 0))
        received = json.loads(self.rfile.read(length))
        body = json.dumps({"path": self.path, "received": received}).encode()
        self.send_response(STATUSES[self.path])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def client():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    process = object.__new__(ServerProcess)  # the client alone, without starting t2i-align
    process.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield process
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["/fine-tunes", "/generate"])
def test_2xx_answers_are_returned(client, path):
    seconds, answer = client.post(path, {"steps": 5})
    assert seconds >= 0
    assert answer == {"path": path, "received": {"steps": 5}}


def test_other_answers_stop_the_script_with_the_body(client):
    with pytest.raises(SystemExit, match=r"/bad answered 422: .*\"steps\": 5"):
        client.post("/bad", {"steps": 5})


def test_a_port_in_use_stops_the_script_before_starting_a_server(client):
    port = int(client.url.rsplit(":", 1)[1])
    assert not port_is_free(port)
    with pytest.raises(SystemExit, match=f"port {port} is in use"):
        ServerProcess(["false"], port, "")
