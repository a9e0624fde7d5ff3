"""Give moto 5.2.5's Kinesis the resharding semantics of the real service, so the KCL can be tested across them.

Stock moto differs from Kinesis in three ways that break a KCL consumer:

* ``Stream.split_shard`` *moves* the parent's records into the children (re-putting them through a router that still
  considers the closed parent), and ``Stream.merge_shards`` *copies* both parents' records into the child. In Kinesis
  a parent keeps its records (readable until retention) and its children start empty.
* ``Stream.get_shard_for_key`` routes a put to the first shard whose range matches, closed or not, so after a reshard
  new records can land in a closed parent. Kinesis routes only to open shards.
* ``GetRecords`` on a closed shard always returns a next iterator. Kinesis returns a null ``NextShardIterator`` once
  a closed shard has been read to its end, which is how the KCL learns ``SHARD_END`` and starts the children.

* At that end, Kinesis also lists the ``ChildShards`` in the GetRecords response; KCL 3 rejects a shard end without
  them as an invalid result and retries forever.

``install()`` replaces those behaviours (idempotent); everything else stays stock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ORIGINALS: dict[str, Callable[..., Any]] = {}


def _split_shard(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
    """Stock validation and child creation, without moving the parent's records."""
    parent = self.shards[shard_to_split]
    records = parent.records
    parent.records = {}  # stock moves these; hide them so nothing is re-put, then give them back
    try:
        ORIGINALS["split_shard"](self, shard_to_split, new_starting_hash_key)
    finally:
        parent.records = records


def _merge_shards(self: Any, shard_to_merge: str, adjacent_shard_to_merge: str) -> None:
    """Stock validation and child creation, without copying the parents' records into the child."""
    first, second = self.shards[shard_to_merge], self.shards[adjacent_shard_to_merge]
    kept = first.records, second.records
    first.records, second.records = {}, {}
    try:
        ORIGINALS["merge_shards"](self, shard_to_merge, adjacent_shard_to_merge)
    finally:
        first.records, second.records = kept


def _get_shard_for_key(self: Any, partition_key: str, explicit_hash_key: str) -> Any:
    """Route to open shards only (stock also considers closed parents). Requests are serialized by the server."""
    everything = self.shards
    self.shards = {shard_id: shard for shard_id, shard in everything.items() if shard.is_open}
    try:
        return ORIGINALS["get_shard_for_key"](self, partition_key, explicit_hash_key)
    finally:
        self.shards = everything


def _get_records(self: Any, stream_arn: str | None, shard_iterator: str, limit: int | None) -> Any:
    """Null next iterator once a closed shard has been read to its last record."""
    from moto.kinesis.utils import decompose_shard_iterator

    next_iterator, records, millis_behind = ORIGINALS["get_records"](self, stream_arn, shard_iterator, limit)
    stream_name, shard_id, _ = decompose_shard_iterator(next_iterator)
    stream = self.describe_stream(stream_arn=stream_arn, stream_name=stream_name)
    shard = stream.get_shard(shard_id)
    position = int(decompose_shard_iterator(next_iterator)[2])
    if not shard.is_open and position >= shard.get_max_sequence_number():
        return None, records, millis_behind
    return next_iterator, records, millis_behind


def _response_get_records(self: Any) -> Any:
    """Add ``ChildShards`` to the GetRecords answer at the end of a closed shard, as Kinesis does."""
    from moto.kinesis.utils import decompose_shard_iterator

    result = ORIGINALS["response_get_records"](self)
    body = result.result
    if isinstance(body, dict) and body.get("NextShardIterator") is None:
        stream_name, shard_id, _ = decompose_shard_iterator(self._get_param("ShardIterator"))
        stream = self.kinesis_backend.describe_stream(
            stream_arn=self._get_param("StreamARN"), stream_name=stream_name
        )
        body["ChildShards"] = [
            {
                "ShardId": child.shard_id,
                "ParentShards": [parent for parent in (child.parent, child.adjacent_parent) if parent],
                "HashKeyRange": {
                    "StartingHashKey": str(child.starting_hash),
                    "EndingHashKey": str(child.ending_hash),
                },
            }
            for child in stream.shards.values()
            if shard_id in (child.parent, child.adjacent_parent)
        ]
    return result


def _targets() -> dict[str, tuple[Any, str, Callable[..., Any]]]:
    from moto.kinesis.models import KinesisBackend, Stream
    from moto.kinesis.responses import KinesisResponse

    return {
        "split_shard": (Stream, "split_shard", _split_shard),
        "merge_shards": (Stream, "merge_shards", _merge_shards),
        "get_shard_for_key": (Stream, "get_shard_for_key", _get_shard_for_key),
        "get_records": (KinesisBackend, "get_records", _get_records),
        "response_get_records": (KinesisResponse, "get_records", _response_get_records),
    }


def install() -> None:
    """Patch moto's Stream, KinesisBackend and KinesisResponse in this process (idempotent)."""
    if ORIGINALS:
        return
    for key, (owner, attribute, replacement) in _targets().items():
        ORIGINALS[key] = getattr(owner, attribute)
        setattr(owner, attribute, replacement)
