import pytest

from dq_ray.config import ConfigError, load_config
from dq_ray.io import InputFile
from dq_ray.pipeline.plan import shuffle_kind


def _files(*sizes: int) -> list[InputFile]:
    return [InputFile(path=f"/data/{i}.jsonl", format="jsonl", name=f"{i}.jsonl", size=s) for i, s in enumerate(sizes)]


def _cfg(**ray):
    return load_config({"input": {"paths": ["x"]}, "ray": ray, "stages": [{"name": "exact_dedup"}]})


def test_auto_takes_the_sort_shuffle_below_the_threshold_and_the_hash_shuffle_from_it():
    cfg = _cfg(shuffle_hash_from_bytes=1000)
    assert shuffle_kind(cfg, _files(400, 500)) == "sort"
    assert shuffle_kind(cfg, _files(400, 600)) == "hash"
    assert shuffle_kind(_cfg(), _files(10**6)) == "sort"  # default threshold: 8 GiB of input


def test_a_named_shuffle_is_used_whatever_the_size():
    assert shuffle_kind(_cfg(shuffle="hash"), _files(10)) == "hash"
    assert shuffle_kind(_cfg(shuffle="sort", shuffle_hash_from_bytes=1), _files(10**9)) == "sort"


def test_an_unknown_shuffle_is_a_config_error():
    with pytest.raises(ConfigError, match="ray.shuffle must be one of auto, sort, hash"):
        _cfg(shuffle="push")


def test_a_run_puts_back_the_shuffle_strategy_it_found(progress_run):
    """The run's sort shuffle must not leak into later Ray Data code of the process (the map's key-based
    repartition needs Ray's hash shuffle)."""
    import ray.data
    from ray.data.context import ShuffleStrategy

    from dq_ray.pipeline.plan import restore_shuffle, use_shuffle

    ctx = ray.data.DataContext.get_current()
    assert ctx.shuffle_strategy != ShuffleStrategy.SORT_SHUFFLE_PULL_BASED  # after the real run of the fixture
    before = use_shuffle("sort")
    assert ctx.shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    restore_shuffle(before)
    assert ctx.shuffle_strategy == before


def test_a_sort_shuffled_groupby_gets_few_large_blocks():
    """Ray Data's sort shuffle splits each of its input blocks into one piece per output block and the driver
    tracks every piece: 1,000 committed files made a million pieces (17 GB on the driver at 1M documents). The
    input is gathered into one block per 128 MiB of Parquet, at least the shuffle partitions, at most 128."""
    from dq_ray.stage import SORT_BLOCK_BYTES, SORT_MAX_BLOCKS, sort_blocks

    assert sort_blocks(0, 1) == 1 and sort_blocks(None, 3) == 3
    assert sort_blocks(10 * SORT_BLOCK_BYTES + 1, 2) == 11
    assert sort_blocks(10 * SORT_BLOCK_BYTES, 20) == 20
    assert sort_blocks(10**6 * SORT_BLOCK_BYTES, 1) == SORT_MAX_BLOCKS
