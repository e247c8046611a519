"""Which operators an ONNX model may use: standard ONNX plus what ONNX Runtime's tools emit.

The standard sets come from the installed ``onnx`` package's schemas, so new opsets are
accepted as soon as onnx knows them.  The ``com.microsoft`` set is reviewed by hand: the fusions
of ``onnxruntime.transformers.optimizer``, the operators of ``onnxruntime.quantization`` and the
plain math kernels ONNX Runtime ships.  Anything else in that domain is reported (medium), and any
other domain needs a custom-op library, i.e. native code (high).
"""

from __future__ import annotations

from functools import cache

STANDARD_DOMAINS = frozenset(
    {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "ai.onnx.preview"}
)
MS_DOMAIN = "com.microsoft"
NCHWC_DOMAIN = "com.microsoft.nchwc"

# ONNX Runtime registers these in the default domain although ONNX does not define them.
ORT_DEFAULT_DOMAIN_EXTRAS = frozenset({"SimplifiedLayerNormalization"})

MS_REVIEWED = frozenset(
    [
        "Attention",
        "MultiHeadAttention",
        "GroupQueryAttention",
        "PackedAttention",
        "PackedMultiHeadAttention",
        "DecoderAttention",
        "DecoderMaskedSelfAttention",
        "DecoderMaskedMultiHeadAttention",
        "LongformerAttention",
        "SparseAttention",
        "RotaryEmbedding",
        "MRotaryEmbedding",
        "RelativePositionBias",
        "GatedRelativePositionBias",
        "RemovePadding",
        "RestorePadding",
        "EmbedLayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "SimplifiedLayerNormalization",
        "LayerNormalization",
        "BiasGelu",
        "FastGelu",
        "Gelu",
        "QuickGelu",
        "BiasAdd",
        "BiasSplitGelu",
        "BiasSoftmax",
        "BiasDropout",
        "GemmFastGelu",
        "SkipGroupNorm",
        "GroupNorm",
        "NhwcConv",
        "FusedMatMul",
        "FusedConv",
        "FusedGemm",
        "TransposeMatMul",
        "ScaledSiLU",
        "MatMulNBits",
        "MatMulBnb4",
        "MatMulFpQ4",
        "GatherBlockQuantized",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "MatMulInteger16",
        "DynamicQuantizeLSTM",
        "QAttention",
        "QEmbedLayerNormalization",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearConv",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearSoftmax",
        "QLinearWhere",
        "QLinearReduceMean",
        "QuantizeLinear",
        "DequantizeLinear",
        "QOrderedAttention",
        "QOrderedMatMul",
        "QOrderedLayerNormalization",
        "QOrderedGelu",
        "QOrderedLongformerAttention",
        "QuantizeWithOrder",
        "DequantizeWithOrder",
        "QuantizeBFP",
        "DequantizeBFP",
        "BeamSearch",
        "GreedySearch",
        "Sampling",
        "WhisperBeamSearch",
        "NGramRepeatBlock",
        "Trilu",
        "Range",
        "ExpandDims",
        "Pad",
        "Unique",
        "CDist",
        "Inverse",
        "GatherND",
        "GridSample",
        "CropAndResize",
        "MaxpoolWithMask",
        "NhwcMaxPool",
        "ConvTransposeWithDynamicPads",
        "MurmurHash3",
        "WordConvEmbedding",
        "AttnLSTM",
        "BifurcationDetector",
        "Rfft",
        "Irfft",
        "ComplexMul",
        "ComplexMulConj",
        "DynamicTimeWarping",
        "UnfoldTensor",
        "SparseToDenseMatMul",
        "MoE",
        "QMoE",
        "Tokenizer",
    ]
)
NCHWC_OPS = frozenset(
    [
        "AveragePool",
        "Conv",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "MaxPool",
        "ReorderInput",
        "ReorderOutput",
        "Upsample",
    ]
)
# Precompiled, execution-provider specific blobs.
EP_CONTEXT_OPS = frozenset({"EPContext"})
# Operators that call back into host code (PyTorch ATen fallback, Python functions).
CODE_EXEC_OPS = frozenset({"ATen", "PythonOp", "PythonOpGrad"})
CODE_EXEC_DOMAINS = frozenset({"org.pytorch.aten", "com.microsoft.extensions"})


@cache
def standard_ops(domain: str) -> frozenset[str]:
    """Every operator name defined in an ONNX domain (all versions)."""
    import onnx.defs

    wanted = "" if domain == "ai.onnx" else domain
    return frozenset(s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain == wanted)


def classify_op(domain: str, op_type: str) -> str | None:
    """The rule id an operator violates, or None when it is allowed."""
    if domain in CODE_EXEC_DOMAINS or (domain == MS_DOMAIN and op_type in CODE_EXEC_OPS):
        return "ONNX014"
    if domain in STANDARD_DOMAINS:
        if op_type in standard_ops(domain):
            return None
        if domain in ("", "ai.onnx") and op_type in ORT_DEFAULT_DOMAIN_EXTRAS:
            return None
        return "ONNX011"
    if domain == MS_DOMAIN:
        if op_type in EP_CONTEXT_OPS:
            return "ONNX013"
        return None if op_type in MS_REVIEWED else "ONNX012"
    if domain == NCHWC_DOMAIN:
        return None if op_type in NCHWC_OPS else "ONNX012"
    return "ONNX010"


def is_known_domain(domain: str) -> bool:
    return domain in STANDARD_DOMAINS or domain in (MS_DOMAIN, NCHWC_DOMAIN)
