"""The registry's records keep what other writers put in a document, and refuse a bad one by name."""

import pytest

from maas.errors import InvalidInput
from maas.records import LabelEvent, VersionMetadata, valid_metadata

SIGNATURE = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
             "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 2]}]}


def test_keys_a_record_does_not_declare_are_written_back_at_every_level() -> None:
    document = {"signature": SIGNATURE, "data": {"source": "s3://b/d", "label_column": "z"},
                "metrics": {"num_examples": 10, "accuracy": 0.9}, "team": "vision"}
    again = VersionMetadata.model_validate(document).to_json()
    assert again["data"] == {"source": "s3://b/d", "label_column": "z"}
    assert again["team"] == "vision" and again["metrics"] == {"num_examples": 10, "accuracy": 0.9}


def test_a_label_event_keeps_a_key_another_writer_added() -> None:
    event = {"at": "2026-12-01T00:00:00Z", "label": "stable", "version": 2, "weight": 1.0, "previous": 1,
             "by": "ci"}
    assert LabelEvent.model_validate(event).to_json() == event


def test_an_invalid_document_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInput, match=r"metrics\.num_examples"):
        valid_metadata({"signature": SIGNATURE, "metrics": {"num_examples": "many"}})
