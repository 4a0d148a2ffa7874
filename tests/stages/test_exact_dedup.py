import pyarrow as pa

from dq_ray.stages.exact_dedup import ExactDedup, normalise, text_hash


def test_normalisation_folds_case_whitespace_punctuation():
    assert normalise("  Hello,   WORLD!\n") == "hello world"
    assert text_hash("The cat sat.") == text_hash("the  CAT sat")
    assert text_hash("The cat sat.") != text_hash("The cat sat on the mat.")
    assert normalise("ｆｕｌｌ　ｗｉｄｔｈ") == "full width"  # NFKC


def test_groups_keep_exactly_the_first_occurrence():
    stage = ExactDedup()
    texts = ["Same text.", "other", "same TEXT", "unique", "same   text!"]
    batch = pa.table(
        {
            "id": list("abcde"),
            "text": texts,
            "source_file": ["f2", "f1", "f1", "f1", "f1"],
            "source_index": [1, 2, 9, 3, 4],
        }
    )
    hashed = stage.process(batch)
    groups = hashed.column("exact_dup_group").to_pylist()
    assert groups[0] == groups[2] == groups[4] and len(set(groups)) == 3
    # the group step may see rows in any order and several groups at once
    out = stage.process_groups(hashed.take([4, 1, 3, 0, 2])).to_pylist()
    by_id = {r["id"]: r for r in out}
    assert {i: by_id[i]["exact_dup_count"] for i in "abcde"} == {"a": 3, "b": 1, "c": 3, "d": 1, "e": 3}
    # smallest (source_file, source_index) wins: f1#4 ("e") before f1#9 and f2#1
    assert [i for i in "abcde" if by_id[i]["exact_dup_keep"]] == ["b", "d", "e"]
    assert stage.process_groups(hashed.slice(0, 0)).num_rows == 0


def test_the_punctuation_table_holds_every_unicode_punctuation_character():
    import sys
    import unicodedata

    from dq_ray.stages.exact_dedup import _punctuation_table

    every = {i for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")}
    assert set(_punctuation_table()) == every
