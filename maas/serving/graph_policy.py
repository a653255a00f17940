"""What a SavedModel's serving graph may do on a serving node.

A SavedModel is a program: its graph can hold ops that read and write files (``ReadFile`` could
return ``~/.ray/auth_token`` as a prediction), list directories, write summaries or checkpoints
anywhere, or run Python (``PyFunc``). Whoever can write the registry's storage could otherwise run
code on every serving node. Before a version is loaded, the graph reachable from its
``serving_default`` signature (the nodes feeding its outputs and every function they call, nested
ones included) is read from ``saved_model.pb`` and checked against :data:`REFUSED_OPS`; a version
using one is refused with a clear error unless its metadata lists the op in ``allowed_ops``.

The variables' own restore (``RestoreV2`` in the saver's functions) is not reachable from the
signature and is not judged: loading needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tensorflow.core.framework.function_pb2 import FunctionDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef
    from tensorflow.core.protobuf.saved_model_pb2 import SavedModel

# Ops that touch the file system, the network or the Python interpreter, or write where a client
# could read it back: none belongs in a model's forward pass.
REFUSED_OPS = frozenset({
    # files: read, write, list, map
    "ReadFile", "WriteFile", "MatchingFiles", "MatchingFilesDataset", "ShardedFilename", "ShardedFilespec",
    "ImmutableConst", "LoadAndRemapMatrix", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
    "GenerateVocabRemapping", "DecodeProtoV2", "EncodeProto",
    # checkpoints
    "Save", "SaveV2", "SaveSlices", "MergeV2Checkpoints", "Restore", "RestoreV2", "RestoreSlice",
    # readers and file-backed data sets
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2", "TFRecordReader", "TFRecordReaderV2", "LMDBReader", "ReaderReadV2",
    "ReaderRead", "ReaderReadUpToV2", "ReaderReadUpTo", "TFRecordDataset", "TFRecordDatasetV2",
    "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2", "TextLineDataset", "LMDBDataset",
    "ExperimentalLMDBDataset", "SqlDataset", "ExperimentalSqlDataset", "CSVDataset", "CSVDatasetV2",
    "ExperimentalCSVDataset", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "SaveDataset",
    "SaveDatasetV2", "LoadDataset", "SnapshotDataset", "SnapshotDatasetV2", "CacheDataset", "CacheDatasetV2",
    "DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3", "DataServiceDatasetV4",
    # summaries, debug and print ops (they write files or logs)
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter", "DebugIdentity", "DebugIdentityV2",
    "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary", "DebugNumericSummaryV2", "Print", "PrintV2",
    # Python
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
})


def serving_ops(saved_model_dir: str | Path, signature: str = "serving_default") -> frozenset[str]:
    """Every op the signature's graph can run, read from ``saved_model.pb`` (nothing is executed)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    ops: set[str] = set()
    for meta in proto.meta_graphs:
        if signature not in meta.signature_def:
            continue
        graph = meta.graph_def
        functions = {f.signature.name: f for f in graph.library.function}
        nodes = {n.name: n for n in graph.node}
        outputs = [t.name for t in meta.signature_def[signature].outputs.values()]
        pending = [_node_name(name) for name in outputs]
        seen_nodes: set[str] = set()
        called: list[str] = []
        while pending:  # the nodes feeding the outputs
            name = pending.pop()
            if name in seen_nodes or name not in nodes:
                continue
            seen_nodes.add(name)
            node = nodes[name]
            ops.add(node.op)
            called += _calls(node, functions)
            pending += [_node_name(i) for i in node.input]
        seen_functions: set[str] = set()
        while called:  # the functions they call, and those these call
            name = called.pop()
            if name in seen_functions:
                continue
            seen_functions.add(name)
            for node in functions[name].node_def:
                ops.add(node.op)
                called += _calls(node, functions)
    return frozenset(op for op in ops if op not in _function_names(proto))


def refused_ops(saved_model_dir: str | Path) -> frozenset[str]:
    """The ops of :data:`REFUSED_OPS` that the serving signature can run."""
    return serving_ops(saved_model_dir) & REFUSED_OPS


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _calls(node: NodeDef, functions: dict[str, FunctionDef]) -> Iterable[str]:
    """The library functions a node calls: as its op, or through function-valued attributes
    (``f``, ``then_branch``, ``body``, lists of functions...)."""
    if node.op in functions:
        yield node.op
    for value in node.attr.values():
        if value.HasField("func") and value.func.name in functions:
            yield value.func.name
        for f in value.list.func:
            if f.name in functions:
                yield f.name


def _function_names(proto: SavedModel) -> set[str]:
    return {f.signature.name for meta in proto.meta_graphs for f in meta.graph_def.library.function}
