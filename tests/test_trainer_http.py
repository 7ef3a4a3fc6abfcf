"""Training streams its shards over HTTP (data.train_shards as URLs, read by webdataset): the same
samples and the same per-step losses as the same shards on local disk, so a multi-node run needs no
shared file system for data. The server is http.server on 127.0.0.1 (an ephemeral port) in a thread."""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_trainer_helpers import read_csv, read_keys, tiny_config, video_shards, write_config

from trainer.run import main

pytestmark = [pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset reads http:// with curl"),
              pytest.mark.usefixtures("one_thread")]




class Server:
    """Serves `root` on 127.0.0.1:<free port> until closed; records every GET path."""

    def __init__(self, root):
        self.paths: list[str] = []
        served = self.paths

        class Handler(SimpleHTTPRequestHandler):
            timeout = 30  # a stuck client cannot hold a handler thread for ever

            def do_GET(self):
                served.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_training_streams_shards_over_http_like_local_files(tmp_path):
    data = tmp_path / "data"
    video_shards(data, 4, 6, frames=(1, 2, 3))
    server = Server(data)
    try:
        runs = {}
        for name, shards in (("local", f"{data}/train-{{000..003}}.tar"),
                             ("http", f"{server.url}/train-{{000..003}}.tar")):
            raw = tiny_config(tmp_path / name, shards, steps=8, batch_size=2,
                              data={"num_workers": 1, "shuffle_buffer": 4},
                              checkpoint={"every_steps": 100, "keep_last": 1})
            raw["model"]["tokenizer"]["train_on"] = f"{data}/*.tar"  # the same tokenizer for both runs
            assert main(["--config", str(write_config(tmp_path / f"{name}.yaml", raw))]) == 0
            runs[name] = read_csv(tmp_path / name / "metrics.csv")
    finally:
        server.close()
    assert not server.thread.is_alive()

    assert sorted(set(server.paths)) == [f"/train-{i:03d}.tar" for i in range(4)]  # every shard came over HTTP
    assert [r["loss"] for r in runs["local"]] == [r["loss"] for r in runs["http"]]
    assert [r["samples"] for r in runs["http"]] == [str(2 * s) for s in range(1, 9)]
    assert read_keys(tmp_path / "local" / "samples_rank0.jsonl") == read_keys(tmp_path / "http" / "samples_rank0.jsonl")
