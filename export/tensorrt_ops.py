"""TensorRT's ONNX operator support, as data, to check exported graphs without a GPU.

Source: the support matrix in onnx/onnx-tensorrt, ``docs/operators.md`` at commit
6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc ("TensorRT 8.5 supports operators up to
Opset 17"); later TensorRT releases (10.x, opsets 9..20) keep every operator below
supported. Only the operator names and the restrictions that can bite our graph are
transcribed; the full table, with types, is in that file.
"""

from __future__ import annotations

#: highest ONNX opset the parser of that release accepts
MAX_OPSET = 17

SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool
BatchNormalization Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose
Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If
ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN
LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul
Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

UNSUPPORTED = frozenset("""
Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det
DynamicQuantizeLinear HammingWindow HannWindow Hardmax IsInf LayerNormalization
MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss
Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
SoftmaxCrossEntropyLoss SplitToSequence STFT StringNormalizer TfIdfVectorizer Unique
""".split())

#: operator -> (input index that must be a constant/initializer, what the matrix says)
CONSTANT_INPUTS = {
    "Slice": (3, "`axes` must be an initializer"),
    "Squeeze": (1, "`axes` must be an initializer"),
    "Unsqueeze": (1, "`axes` must be a constant tensor"),
    "CumSum": (1, "`axis` must be an initializer"),
    "TopK": (1, "`K` input must be an initializer"),
    "Conv": (1, "weights `W` must be an initializer (TensorRT 8.4 matrix)"),
    "ConvTranspose": (1, "weights `W` must be an initializer (TensorRT 8.4 matrix)"),
}
