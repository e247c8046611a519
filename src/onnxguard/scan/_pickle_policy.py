"""The pickle policy: which globals a state dict may import, and which are known gadgets.

The allowlist mirrors what ``torch.load(weights_only=True)`` accepts (tensor rebuild functions,
storages, dtypes, OrderedDict) plus numpy's array reconstruction and joblib's array wrapper (a
plain attribute holder: joblib's reader, not the wrapper, turns it into an array); it is written
out here rather than read from torch so that scanning never imports torch.  Everything else is
at least "unknown" (high); the gadget lists only decide whether it is called critical.
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_TORCH_DTYPES = _words(
    """
    bfloat16 bits16 bits1x8 bits2x4 bits4x2 bits8 bool complex128 complex32 complex64
    float16 float32 float64 float4_e2m1fn_x2 float8_e4m3fn float8_e4m3fnuz float8_e5m2
    float8_e5m2fnuz float8_e8m0fnu half float double long int short cfloat cdouble qint32
    qint8 quint2x4 quint4x2 quint8 uint8 uint16 uint32 uint64 int8 int16 int32 int64 int1
    int2 int3 int4 int5 int6 int7 uint1 uint2 uint3 uint4 uint5 uint6 uint7
    per_channel_affine per_channel_affine_float_qparams per_channel_symmetric
    per_tensor_affine per_tensor_symmetric
    """
)
_TORCH_STORAGES = _words(
    """
    BFloat16 Bool Byte Char ComplexDouble ComplexFloat Double Float Half Int Long QInt32
    QInt8 QUInt2x4 QUInt4x2 QUInt8 Short
    """
)
_TORCH_TENSORS = _words(
    """
    BFloat16 Bool Byte Char Double Float Half Int Long Short
    """
)
_TORCH_REBUILD = _words(
    """
    _rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter
    _rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor
    _rebuild_nested_tensor _rebuild_meta_tensor_no_storage _rebuild_wrapper_subclass
    _rebuild_device_tensor_from_cpu_tensor _rebuild_device_tensor_from_numpy
    """
)

# joblib's array wrappers: their arrays' bytes follow the wrapper in the stream (see pickles.py).
JOBLIB_ARRAY_WRAPPERS: frozenset[tuple[str, str]] = frozenset(
    {
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
        ("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper"),
    }
)

SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("collections", "Counter"),
        ("torch.nn.parameter", "Parameter"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("torch", "Tensor"),
        ("torch", "device"),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch.storage", "TypedStorage"),
        ("torch.storage", "UntypedStorage"),
        ("_codecs", "encode"),
        ("builtins", "bytearray"),
        ("builtins", "bytes"),  # b"" in protocols 0-2
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "slice"),
        # numpy arrays and scalars inside checkpoints (numpy 1 and 2 module paths)
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
    | JOBLIB_ARRAY_WRAPPERS
    | {("torch", dtype) for dtype in _TORCH_DTYPES}
    | {(mod, f"{kind}Storage") for kind in _TORCH_STORAGES for mod in ("torch", "torch.cuda")}
    | {(mod, f"{kind}Tensor") for kind in _TORCH_TENSORS for mod in ("torch", "torch.cuda")}
    | {
        (mod, f"{kind}Tensor")
        for kind in _TORCH_TENSORS
        for mod in ("torch.sparse", "torch.cuda.sparse")
    }
    | {("torch._utils", name) for name in _TORCH_REBUILD}
    | {
        ("numpy.dtypes", f"{k}DType")
        for k in _words(
            "Float16 Float32 Float64 Int8 Int16 Int32 Int64 UInt8 UInt16 UInt32 UInt64 Bool "
            "Complex64 Complex128"
        )
    }
)

# Modules whose every member is a code-execution, file, network or deserialisation primitive.
_DANGEROUS_MODULES = frozenset(
    _words(
        """
    os posix nt posixpath ntpath subprocess _posixsubprocess sys importlib imp pkgutil runpy
    zipimport code codeop pty shutil socket socketserver ssl http urllib urllib2 urllib3
    requests httpx aiohttp ftplib smtplib telnetlib poplib imaplib nntplib xmlrpc webbrowser
    ctypes cffi multiprocessing concurrent asyncio signal _thread thread threading pickle
    _pickle cPickle pickletools dill cloudpickle joblib marshal shelve dbm types inspect
    linecache pydoc timeit trace profile cProfile pdb bdb doctest venv ensurepip pip
    setuptools distutils site sysconfig io _io codecs tempfile glob fileinput mmap resource
    platform commands popen2 select selectors logging gc __main__ operator functools jinja2
    yaml sqlite3 tarfile zipfile
    """
    )
)
# Dangerous members of otherwise unremarkable packages.
_DANGEROUS_PREFIXES = _words(
    """
    torch.hub torch.jit torch.package torch.serialization.load torch.load torch._inductor
    torch._dynamo torch.utils.cpp_extension torch.distributed torch.library torch.ops
    torch._ops torch.fx torch._C torch.cuda._lazy torch.testing torch.utils.data
    torch._export numpy.load numpy.loadtxt numpy.fromfile numpy.testing numpy.f2py
    numpy.ctypeslib numpy.distutils numpy.lib.npyio numpy.lib.format pandas.read_pickle
    pandas.io keras tensorflow transformers.dynamic_module_utils huggingface_hub onnx.hub
    sklearn.utils._testing
    """
)
# Names that are code execution wherever they come from (builtins, attribute walks).
_DANGEROUS_NAMES = frozenset(
    _words(
        """
    eval exec execfile compile open __import__ getattr setattr delattr globals locals vars
    input breakpoint help exit quit system popen spawn spawnl spawnv execv execve execl fork
    call check_call check_output run Popen getoutput getstatusoutput load loads
    import_module resolve_name find_class apply attrgetter methodcaller __reduce__
    __reduce_ex__ __globals__ __builtins__ __subclasses__ __getattribute__ __code__
    __class__ __bases__ __mro__ __init_subclass__ __dict__ __loader__ __spec__ read_pickle
    urlopen getline get_server_certificate create_connection
    """
    )
)


def is_safe_global(module: str, name: str) -> bool:
    return (module, name) in SAFE_GLOBALS


def is_dangerous_global(module: str, name: str) -> bool:
    """Known gadget: a dangerous module (or submodule), prefix, or name anywhere in the path."""
    if module.split(".")[0] in _DANGEROUS_MODULES:
        return True
    dotted = f"{module}.{name}"
    if any(dotted == p or dotted.startswith(p + ".") for p in _DANGEROUS_PREFIXES):
        return True
    parts = name.split(".")
    return any(part in _DANGEROUS_NAMES or part.startswith("__") for part in parts)
