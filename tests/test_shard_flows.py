"""The shard flows end to end: command line -> Ray Data -> shards on S3 -> manifest, as a user runs them."""

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bgwsol.data.shards.shardset import ShardSet
from conftest import load_flow, upload_tree

pytestmark = [pytest.mark.ray, pytest.mark.s3]


def test_shard_ilsvrc_flow_to_s3(tiny_synthetic, ray_local, bucket, capsys):
    paths, cfg = tiny_synthetic
    flow = load_flow("shard_ilsvrc")
    assert flow.main(["--source", str(paths.ilsvrc), "--output", f"s3://{bucket}/ilsvrc",
                      "--etl.samples_per_shard", "10", "--etl.max_short_side", "48"]) == 0
    out = capsys.readouterr().out
    shards = ShardSet.open(f"s3://{bucket}/ilsvrc")
    total = cfg.num_classes * (cfg.train_per_class + cfg.test_per_class)
    assert sum(shards.count(s) for s in shards.splits) == total
    assert f"s3://{bucket}/ilsvrc" in out and "rejected           0" in out
    assert shards.manifest["etl"]["samples_per_shard"] == 10


def test_shard_flows_read_a_source_in_a_bucket(tiny_synthetic, ray_local, bucket, capsys):
    """CUB and a background folder that live in the bucket: bucket in, shards out, source recorded."""
    paths, cfg = tiny_synthetic
    upload_tree(paths.cub, f"s3://{bucket}/raw/CUB_200_2011")
    upload_tree(paths.background, f"s3://{bucket}/raw/background")
    assert load_flow("shard_cub").main(["--source", f"s3://{bucket}/raw/CUB_200_2011", "--output",
                                        f"s3://{bucket}/shards/cub", "--etl.max_short_side", "48"]) == 0
    assert load_flow("shard_background").main(["--source", f"s3://{bucket}/raw/background", "--output",
                                               f"s3://{bucket}/shards/bg", "--etl.max_short_side", "48"]) == 0
    cub, bg = ShardSet.open(f"s3://{bucket}/shards/cub"), ShardSet.open(f"s3://{bucket}/shards/bg")
    assert sum(cub.count(s) for s in cub.splits) == cfg.num_classes * (cfg.cub_train_per_class + cfg.cub_test_per_class)
    assert bg.count("background") == cfg.num_background
    assert cub.manifest["source"] == f"s3://{bucket}/raw/CUB_200_2011"
    assert bg.manifest["source"] == f"s3://{bucket}/raw/background"
    assert "rejected           0" in capsys.readouterr().out


def test_shard_background_flow_crawls_a_url_list(tiny_synthetic, ray_local, bucket, tmp_path, capsys):
    paths, cfg = tiny_synthetic
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(paths.background))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        names = sorted(p.name for p in paths.background.iterdir())
        urls = tmp_path / "urls.csv"
        urls.write_text("url,license\n" + "".join(f"{base}/{n},CC0\n" for n in names) + f"{base}/missing.jpg,CC0\n")
        flow = load_flow("shard_background")
        assert flow.main(["--source", str(urls), "--output", f"s3://{bucket}/bg", "--cache_dir", str(tmp_path / "c"),
                          "--etl.max_short_side", "48", "--crawl.retries", "1"]) == 0
    finally:
        server.shutdown()
    shards = ShardSet.open(f"s3://{bucket}/bg")
    assert shards.count("background") == cfg.num_background
    from tests.test_etl import read_all

    metas = [json.loads(v["json"]) for v in read_all(shards, "background").values()]
    assert sorted(m["source"] for m in metas) == sorted(f"{base}/{n}" for n in names)
    assert all(m["license"] == "CC0" and m["label"] == -1 for m in metas)
