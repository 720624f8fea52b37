"""Serve the digit classifier: the four handlers of SageMaker's PyTorch serving container.

SageMaker's PyTorch container calls `model_fn` once, then `input_fn`, `predict_fn` and `output_fn` for
every request. The same handlers run behind SDK 3 `ModelBuilder`'s in-process server (`in_process_spec`).

Requests, one content type per request:

| Content-Type          | body                                                                  |
| --------------------- | --------------------------------------------------------------------- |
| application/json      | a list of images, each 28 lists of 28 values or a row of 784 values   |
| application/x-npy     | an array saved with `numpy.save`, shape (N, 28, 28) or (N, 784)       |
| image/png, image/jpeg | one picture of one digit: any size, colour or grey, dark or light ink |

Pixel scale: a JSON or .npy request whose values all lie between 0 and 1 is read as scaled to [0, 1];
otherwise every value must lie between 0 and 255, as MNIST's bytes do. (An almost black image of only
0s and 1s would be misread as scaled; an all-black one reads the same either way.) Pixels are numbers:
JSON's true and false are refused, not read as 1 and 0. An `.npy` body's header is read first: its
dtype, shape and size are checked before any array memory is allocated.

A picture is made to look like an MNIST digit: turned upright as its EXIF orientation says (phone
cameras store pixels sideways and tag how to turn them), grey (16-bit greyscale scaled down, not
clipped), inverted when the ink is darker than the background (MNIST digits are light on black),
cropped to the ink, scaled to fit 20 x 20 pixels and centred by its centre of mass in 28 x 28, as the
MNIST digits themselves were prepared. A truncated or damaged PNG fails its checksums and is refused;
JPEG has no checksums, so damage that still decodes cannot be told from the picture itself.

The response is JSON, one entry per image:

    {"predictions": [{"digit": 7, "probabilities": [0.0001, ..., 0.9987, ...]}, ...]}

Bad requests raise `InvalidInput` (a ValueError) whose message says what was wrong; servers answer it
with its 4xx `status_code`. Limits: `MAX_BODY_BYTES`, `MAX_BATCH`, `MAX_IMAGE_PIXELS`.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import tokenize
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps

from mnist_data import IMAGE_SIZE, normalise
from mnist_model import MODEL_FILE, MNISTClassifier, load_model

if TYPE_CHECKING:
    from sagemaker.serve.spec.inference_spec import InferenceSpec

JSON = "application/json"
NPY = "application/x-npy"
# PIL calls the JPEGs of many phone cameras MPO (JPEG with extra pictures appended).
IMAGE_FORMATS = {"image/png": ("PNG",), "image/jpeg": ("JPEG", "MPO")}
CONTENT_TYPES = (JSON, NPY, *IMAGE_FORMATS)

# SageMaker real-time endpoints accept request bodies up to 6 MB; refusing more here keeps the
# in-process server honest about what a real endpoint would take.
MAX_BODY_BYTES = 6 * 1024 * 1024
# Images per request: enough for the whole MNIST test set in ten requests, small enough to answer fast.
MAX_BATCH = 1000
# A picture declaring more pixels than this (4096 x 4096) is refused before it is decoded: a small PNG
# can declare huge dimensions and take gigabytes to decode (a "decompression bomb").
MAX_IMAGE_PIXELS = 4096 * 4096
DIGIT_BOX = 20  # MNIST digits fit a 20 x 20 box centred in 28 x 28
# numpy.savez writes a zip archive of .npy files; sent as .npy, it must be named, not half-read.
ZIP_SIGNATURE = b"PK\x03\x04"
# PIL's modes for greyscale with more than 8 bits: PNG's 16-bit greyscale opens as I;16 (or I).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# What PIL raises for a truncated or damaged file, besides OSError: the errors its own Image.open
# treats as "not this format", and those of its parsers (chunk lengths, EXIF, palettes).
DAMAGED_PICTURE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error)


try:
    # SageMaker's PyTorch serving container answers an exception of this class with its status code,
    # and any other exception with a 500; outside the container the toolkit is not installed.
    from sagemaker_inference.errors import BaseInferenceToolkitError

    _ERROR_BASES: tuple[type[Exception], ...] = (BaseInferenceToolkitError, ValueError)
except ImportError:
    _ERROR_BASES = (ValueError,)


class InvalidInput(*_ERROR_BASES):
    """A request the model cannot answer; `status_code` is the HTTP status a server should reply with."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        ValueError.__init__(self, message)
        # The attributes the serving toolkit reads: status, reason phrase, and the message it sends back.
        self.status_code, self.phrase, self.message = status_code, message, message


def model_fn(model_dir: str) -> MNISTClassifier:
    """Load `model.pt` from the model folder: tensors and plain values only, never pickled code."""
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the model artifact must hold {MODEL_FILE} (train.py writes it)")
    try:
        return load_model(path)
    except pickle.UnpicklingError as error:
        raise RuntimeError(f"{path} refused: it holds objects other than tensors and plain values ({error})") from error


def input_fn(body: bytes | str, content_type: str) -> torch.Tensor:
    """Decode a request into float images (N, 28, 28) on MNIST's 0-255 scale."""
    data = body.encode() if isinstance(body, str) else bytes(body)
    if len(data) > MAX_BODY_BYTES:
        raise InvalidInput(f"request body is {len(data):,} bytes; the limit is {MAX_BODY_BYTES:,}", status_code=413)
    if not data:
        raise InvalidInput("request body is empty: send images as JSON, .npy, PNG or JPEG")
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type == JSON:
        return _as_images(_parse_json(data))
    if media_type == NPY:
        return _as_images(_parse_npy(data))
    if media_type in IMAGE_FORMATS:
        return _picture_to_digit(data, IMAGE_FORMATS[media_type])[None]
    raise InvalidInput(f"content type {content_type!r} is not supported; use one of {', '.join(CONTENT_TYPES)}", 415)


def predict_fn(images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Class probabilities (N, 10) for images on the 0-255 scale."""
    with torch.inference_mode():
        return torch.softmax(model.eval()(normalise(images)), dim=1)


def output_fn(probabilities: torch.Tensor, accept: str | None) -> bytes:
    """JSON with the predicted digit and the ten probabilities of each image."""
    media_type = (accept or JSON).split(";")[0].strip().lower()
    if media_type not in (JSON, "*/*"):
        raise InvalidInput(f"accept type {accept!r} is not supported; the endpoint answers {JSON}", status_code=406)
    predictions = [
        {"digit": int(row.argmax()), "probabilities": [round(float(p), 6) for p in row]} for row in probabilities
    ]
    return json.dumps({"predictions": predictions}).encode()


def _parse_json(data: bytes) -> np.ndarray:
    """Parse a JSON body into a numeric array; anything but a rectangular list of numbers is refused."""
    try:
        # Every number as a float: Python's int() refuses literals of over 4,300 digits, and integers
        # beyond 64 bits would make an array of objects. A float too large becomes infinity.
        parsed = json.loads(data, parse_int=float)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise InvalidInput(f"request body is not valid JSON ({error})") from error
    if not isinstance(parsed, list):
        raise InvalidInput(f"JSON body must be a list of images, not a {type(parsed).__name__}")
    try:
        array = np.array(parsed)
    except (ValueError, OverflowError) as error:  # ragged lists: images of different sizes
        raise InvalidInput(f"JSON images must all have the same shape ({error})") from error
    # numpy reads true and false among numbers as 1 and 0. A numeric array holds no strings, so the
    # words can only be JSON's booleans here.
    if array.dtype.kind in "iuf" and (b"true" in data or b"false" in data):
        raise InvalidInput("pixel values must be numbers; the request holds true or false among them")
    return array


def _parse_npy(data: bytes) -> np.ndarray:
    """Read a `.npy` body, header first: its dtype, batch and byte count are checked before any allocation.

    numpy.load would allocate the array the header declares before reading a byte of it, and loading
    an array of objects would unpickle code: neither happens here. The array is a view of the body.
    """
    if data.startswith(ZIP_SIGNATURE):
        raise InvalidInput("request body is an .npz archive (numpy.savez); send one array saved with numpy.save")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):  # 3.0 exists only for structured dtypes with non-Latin-1 names
            raise ValueError(f"format version {version[0]}.{version[1]} is not 1.0 or 2.0")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, EOFError, SyntaxError, tokenize.TokenError) as error:  # the header is a Python literal
        raise InvalidInput(f"request body is not a readable .npy array without objects ({error})") from error
    if dtype.hasobject:
        raise InvalidInput("request body is not a readable .npy array without objects: loading it would unpickle code")
    if dtype.kind not in "iuf":
        raise InvalidInput(f"pixel values must be numbers, not {dtype} values")
    if shape and shape[0] > MAX_BATCH:
        raise InvalidInput(f"the batch holds {shape[0]:,} images; the limit is {MAX_BATCH:,} per request", 413)
    if len(shape) > 1 and shape[1:] not in ((IMAGE_SIZE * IMAGE_SIZE,), (IMAGE_SIZE, IMAGE_SIZE)):
        raise InvalidInput(f"images must be 28 x 28 or rows of 784 values; the .npy header declares shape {shape}")
    declared, held = math.prod(shape) * dtype.itemsize, len(data) - stream.tell()
    if held < declared:
        message = f"its header declares {declared:,} bytes of {dtype} {shape}, but the body holds {held:,} after it"
        raise InvalidInput(f"request body is not a readable .npy array: {message} (truncated)")
    if held > declared:
        message = f"the .npy body holds {held - declared:,} bytes more than its header declares ({dtype} {shape})"
        raise InvalidInput(f"{message}: send one array saved with numpy.save")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


def _as_images(array: np.ndarray) -> torch.Tensor:
    """Check a batch of images (N, 28, 28) or (N, 784) and bring it to the 0-255 scale."""
    if array.ndim == 0 or len(array) == 0:
        raise InvalidInput("the batch is empty: send a list of at least one image")
    if array.dtype.kind not in "iuf":
        raise InvalidInput(f"pixel values must be numbers, not {array.dtype} values")
    if len(array) > MAX_BATCH:
        raise InvalidInput(f"the batch holds {len(array):,} images; the limit is {MAX_BATCH:,} per request", 413)
    if array.shape[1:] == (IMAGE_SIZE * IMAGE_SIZE,):
        array = array.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        hint = " (one image? send it in a list: [image])" if array.shape in ((28, 28), (784,)) else ""
        raise InvalidInput(f"images must be 28 x 28 or rows of 784 values; got a batch of shape {array.shape}{hint}")
    images = torch.from_numpy(array.astype(np.float32))
    if not torch.isfinite(images).all():
        message = "the request holds NaN or infinity (or a number too large for a float)"
        raise InvalidInput(f"pixel values must be finite numbers; {message}")
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 255:
        raise InvalidInput(f"pixel values must lie in [0, 1] or [0, 255]; they span [{low:g}, {high:g}]")
    return images * 255 if high <= 1 else images


def _picture_to_digit(data: bytes, formats: tuple[str, ...]) -> torch.Tensor:
    """Turn a PNG or JPEG of a digit into an MNIST-like image (28, 28) on the 0-255 scale."""
    expected_format = formats[0]
    picture = _open_picture(data, formats)
    try:
        picture.verify()  # PNG: every chunk's checksum, image data included, without decoding it
        picture = Image.open(io.BytesIO(data))  # verify() leaves the picture unusable: open it again
        # Phone cameras store the pixels as the sensor read them and tag how to turn them upright.
        grey = _grey_levels(ImageOps.exif_transpose(picture))
    except DAMAGED_PICTURE_ERRORS as error:
        raise InvalidInput(f"the {expected_format} image cannot be decoded ({error})") from error
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 127:  # a light background: dark ink on paper
        grey = 255 - grey
    return _centre_like_mnist(grey)


def _open_picture(data: bytes, formats: tuple[str, ...]) -> Image.Image:
    """Read a picture's header; refuse other formats and pictures declaring more than MAX_IMAGE_PIXELS."""
    expected_format = formats[0]
    try:
        picture = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as error:  # PIL's own, higher limit
        raise InvalidInput(f"the image declares too many pixels: {error}", status_code=413) from error
    except DAMAGED_PICTURE_ERRORS as error:  # UnidentifiedImageError, or a header cut short
        raise InvalidInput(f"request body is not a readable {expected_format} image ({error})") from error
    if picture.format not in formats:
        raise InvalidInput(f"the content type says {expected_format}, but the body is a {picture.format} image")
    width, height = picture.size
    if width * height > MAX_IMAGE_PIXELS:
        message = f"the image declares {width} x {height} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels"
        raise InvalidInput(message, status_code=413)
    return picture


def _grey_levels(picture: Image.Image) -> np.ndarray:
    """The picture's grey levels on a 0-255 scale, transparent parts laid on white paper."""
    if picture.mode in SIXTEEN_BIT_MODES:
        # PIL's convert("L") clips 16-bit levels at 255, turning nearly every pixel white: scale instead.
        levels = np.asarray(picture, dtype=np.float32)
        grey = levels * (255 / 65535)
        transparent = picture.info.get("transparency")
        if isinstance(transparent, int):  # one 16-bit level marked transparent (PNG's tRNS chunk)
            grey[levels == transparent] = 255
        return grey
    if "A" in picture.getbands() or "transparency" in picture.info:
        # Drawing apps save strokes on a transparent background: lay them on white paper.
        picture = Image.alpha_composite(Image.new("RGBA", picture.size, "white"), picture.convert("RGBA"))
    return np.asarray(picture.convert("L"), dtype=np.float32)


def _centre_like_mnist(ink: np.ndarray) -> torch.Tensor:
    """Crop to the ink, scale it to fit 20 x 20, and centre it by its centre of mass in 28 x 28."""
    ink = ink - ink.min()
    if ink.max() == 0:
        return torch.zeros(IMAGE_SIZE, IMAGE_SIZE)
    rows, cols = np.nonzero(ink > 0.2 * ink.max())
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = DIGIT_BOX / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(ink * (255 / ink.max())).resize(size, Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0, 255)
    mass_rows, mass_cols = np.indices(digit.shape)
    total = digit.sum()
    top = round(IMAGE_SIZE / 2 - (mass_rows * digit).sum() / total)
    left = round(IMAGE_SIZE / 2 - (mass_cols * digit).sum() / total)
    top = min(max(top, 0), IMAGE_SIZE - digit.shape[0])
    left = min(max(left, 0), IMAGE_SIZE - digit.shape[1])
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return torch.from_numpy(canvas)


def content_type_of(body: bytes) -> str:
    """Recognise a body by its first bytes: PNG, JPEG and .npy files start with a signature."""
    signatures = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"\x93NUMPY": NPY}
    for signature, content_type in signatures.items():
        if body.startswith(signature):
            return content_type
    if body.lstrip()[:1] in (b"", b"[", b"{"):  # an empty body goes on to input_fn, which says so
        return JSON
    raise InvalidInput(f"the body (starting {body[:8]!r}) is not JSON, .npy, PNG or JPEG", status_code=415)


def in_process_spec(model_folder: str | Path) -> InferenceSpec:
    """The handlers as an `InferenceSpec` for `ModelBuilder(mode=Mode.IN_PROCESS)`.

    The SageMaker SDK and FastAPI are imported here, not at the top: the serving container has
    neither. The in-process server of SDK 3.27 hands the spec the body but not the request's
    Content-Type, so the spec recognises the format from the body (`content_type_of`); a real endpoint
    passes the header to `input_fn`. `InvalidInput` becomes an HTTP error with its status code.
    """
    from fastapi import HTTPException, Response
    from sagemaker.serve.spec.inference_spec import InferenceSpec

    class DigitHandlers(InferenceSpec):
        def load(self, model_dir: str | None) -> MNISTClassifier:
            # The in-process server calls load(None): the folder is the one given to in_process_spec.
            return model_fn(model_dir or str(model_folder))

        def invoke(self, body: bytes, model: MNISTClassifier) -> Response:
            try:
                images = input_fn(body, content_type_of(body))
                return Response(output_fn(predict_fn(images, model), JSON), media_type=JSON)
            except InvalidInput as error:
                raise HTTPException(status_code=error.status_code, detail=str(error)) from error

    return DigitHandlers()
