"""Tests of the serving handlers (code/inference.py) and of the model served in-process by ModelBuilder.

Every input format decodes to the same digits; bad requests get clear client errors, directly and
through the in-process endpoint, which keeps serving afterwards; the model file never unpickles code.
"""

from __future__ import annotations

import collections
import concurrent.futures
import importlib.util
import io
import json
import logging
import socket
import struct
import sys
import tarfile
import time
import tracemalloc
import types
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

import inference
import train
from local_aws import LocalAWS
from mnist_data import load_split, normalise

REPO = Path(__file__).resolve().parents[1]
HAND_DRAWN_7 = REPO / "notebooks" / "images" / "hand_drawn_7.png"
IN_PROCESS_PORT = 9007  # fixed by SageMaker SDK 3.27's in-process server


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Path:
    """A model trained by train.py's code for 2 epochs on the mirror's 3,600 training digits (about 95%)."""
    run_dir = tmp_path_factory.mktemp("inference-run")
    result = train.fit(train.Hyperparameters(epochs=2), train.Paths.under(run_dir, mirror_dir))
    return result.model_path.parent


@pytest.fixture(scope="module")
def model(model_dir: Path) -> torch.nn.Module:
    return inference.model_fn(str(model_dir))


@pytest.fixture(scope="module")
def test_digits(mirror_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The mirror's 1,000 held-out real digits (uint8) and their labels."""
    return load_split(mirror_dir, "test")


def picture_bytes(image: np.ndarray, fmt: str, **options: object) -> bytes:
    """Encode a uint8 array (H, W) or (H, W, 3) as PNG or JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    """An array as `numpy.save` writes it (object arrays are pickled only when allowed)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares width x height pixels (a decompression bomb)."""
    png = picture_bytes(np.zeros((1, 1), dtype=np.uint8), "PNG")
    header = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


def accuracy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return (probabilities.argmax(dim=1) == labels).float().mean().item()


def handle(model: torch.nn.Module, body: bytes, content_type: str) -> list[dict]:
    """Run one request through the handlers, as the serving container does; return its predictions."""
    images = inference.input_fn(body, content_type)
    return json.loads(inference.output_fn(inference.predict_fn(images, model), "application/json"))["predictions"]


# --- Input formats ---------------------------------------------------------------------------------


def test_json_nested_flat_scaled_and_npy_decode_to_the_same_images(test_digits) -> None:
    images = test_digits[0][:5].numpy()
    expected = torch.from_numpy(images.astype(np.float32))
    bodies = {
        "JSON 28 x 28": (json.dumps(images.tolist()), "application/json"),
        "JSON rows of 784": (json.dumps(images.reshape(5, 784).tolist()).encode(), "application/json"),
        "JSON scaled to [0, 1]": (json.dumps((images / 255).tolist()), "application/json; charset=utf-8"),
        "npy uint8": (npy_bytes(images), "application/x-npy"),
        "npy float rows scaled": (npy_bytes((images / 255).astype(np.float32).reshape(5, 784)), "application/x-npy"),
    }
    for name, (body, content_type) in bodies.items():
        decoded = inference.input_fn(body, content_type)
        assert decoded.shape == (5, 28, 28), name
        torch.testing.assert_close(decoded, expected, atol=1e-3, rtol=0, msg=name)


def pictures_of(image: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """One MNIST digit as the pictures a user might send, with their content types."""
    big_colour = np.stack([np.asarray(Image.fromarray(255 - image).resize((112, 112)))] * 3, axis=-1)
    return {
        "PNG, light on dark": (picture_bytes(image, "PNG"), "image/png"),
        "PNG, dark on light": (picture_bytes(255 - image, "PNG"), "image/png"),
        "JPEG, dark on light, 112 x 112 colour": (picture_bytes(big_colour, "JPEG", quality=90), "image/jpeg"),
    }


def test_pictures_of_real_digits_in_every_format_are_recognised(model, test_digits) -> None:
    images, labels = test_digits[0][:200].numpy(), test_digits[1][:200]
    decoded = collections.defaultdict(list)
    for image in images:
        for name, (body, content_type) in pictures_of(image).items():
            decoded[name].append(inference.input_fn(body, content_type))
    for name, digits in decoded.items():
        assert accuracy(inference.predict_fn(torch.cat(digits), model), labels) >= 0.9, name
    # Dark-on-light pictures are inverted: they decode to exactly the light-on-dark digits.
    light, dark = torch.cat(decoded["PNG, light on dark"]), torch.cat(decoded["PNG, dark on light"])
    torch.testing.assert_close(dark, light, atol=0, rtol=0)


def test_the_committed_hand_drawn_digit_is_read_as_a_7(model) -> None:
    picture = Image.open(HAND_DRAWN_7)
    assert picture.size[0] > 28 and picture.mode == "RGB"  # a colour picture larger than MNIST's digits
    (prediction,) = handle(model, HAND_DRAWN_7.read_bytes(), "image/png")
    assert prediction["digit"] == 7


def test_output_holds_the_digit_and_ten_probabilities_per_image(model, test_digits) -> None:
    predictions = handle(model, npy_bytes(test_digits[0][:3].numpy()), "application/x-npy")
    assert len(predictions) == 3
    for prediction in predictions:
        assert len(prediction["probabilities"]) == 10
        assert sum(prediction["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert prediction["digit"] == int(np.argmax(prediction["probabilities"]))


# --- Bad input -------------------------------------------------------------------------------------

ONE_IMAGE = [[0] * 784]
NPY_OF_OBJECTS = npy_bytes(np.array([{"pickled": "object"}]), allow_pickle=True)
NPY_OF_COMPLEX_NUMBERS = npy_bytes(np.zeros((1, 784), dtype=np.complex64))
TRUNCATED_NPY = npy_bytes(np.zeros((2, 784), dtype=np.uint8))[:200]
TRUNCATED_PNG = picture_bytes(np.full((64, 64), 128, dtype=np.uint8), "PNG")[:60]
BAD_REQUESTS = {
    "malformed JSON": (b'[[0, 0, 0', "application/json", 400, "not valid JSON"),
    "JSON that is not a list": (b'{"instances": []}', "application/json", 400, "must be a list of images"),
    "deeply nested JSON": (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "not valid JSON"),
    "ragged JSON": (json.dumps([[0] * 784, [0] * 783]).encode(), "application/json", 400, "same shape"),
    "wrong shape": (json.dumps([[[0] * 27] * 28]).encode(), "application/json", 400, "28 x 28 or rows of 784"),
    "one image not in a list": (json.dumps([0] * 784).encode(), "application/json", 400, "send it in a list"),
    "strings as pixels": (json.dumps([["0"] * 784]).encode(), "application/json", 400, "must be numbers"),
    "booleans as pixels": (json.dumps([[True] * 784]).encode(), "application/json", 400, "must be numbers"),
    "NaN": (b"[[NaN" + b", 0" * 783 + b"]]", "application/json", 400, "NaN or infinity"),
    "infinity": (b"[[1e999" + b", 0" * 783 + b"]]", "application/json", 400, "NaN or infinity"),
    "negative pixels": (json.dumps([[-1] * 784]).encode(), "application/json", 400, "must lie in [0, 1] or [0, 255]"),
    "pixels above 255": (json.dumps([[256] * 784]).encode(), "application/json", 400, "must lie in"),
    "empty batch": (b"[]", "application/json", 400, "batch is empty"),
    "empty body": (b"", "application/json", 400, "body is empty"),
    "batch above the limit": (
        json.dumps([[0] * 784] * (inference.MAX_BATCH + 1)).encode(), "application/json", 413, "limit is 1,000",
    ),
    "body above the limit": (b" " * (inference.MAX_BODY_BYTES + 1), "application/json", 413, "the limit is"),
    "npy of objects": (NPY_OF_OBJECTS, "application/x-npy", 400, "without objects"),
    "npy of complex numbers": (NPY_OF_COMPLEX_NUMBERS, "application/x-npy", 400, "must be numbers"),
    "truncated npy": (TRUNCATED_NPY, "application/x-npy", 400, "not a readable .npy"),
    "non-image bytes as PNG": (b"\x89PNG\r\n\x1a\n this is not a picture", "image/png", 400, "not a readable PNG"),
    "truncated PNG": (TRUNCATED_PNG, "image/png", 400, "cannot be decoded"),
    "JPEG sent as PNG": (picture_bytes(np.zeros((28, 28), dtype=np.uint8), "JPEG"), "image/png", 400, "body is a JPEG"),
    "decompression bomb": (png_declaring(100_000, 100_000), "image/png", 413, "declares too many pixels"),
    "picture above the pixel limit": (png_declaring(5_000, 5_000), "image/png", 413, "5000 x 5000 pixels"),
    "unsupported content type": (b"GIF89a\x01\x00\x01\x00", "image/gif", 415, "not supported"),
}


@pytest.mark.parametrize("body, content_type, status, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_raise_a_clear_client_error(body: bytes, content_type: str, status: int, message: str) -> None:
    with pytest.raises(inference.InvalidInput, match=message.replace("[", r"\[")) as error:
        inference.input_fn(body, content_type)
    assert error.value.status_code == status and isinstance(error.value, ValueError)


def test_an_unsupported_accept_type_is_refused(model) -> None:
    probabilities = inference.predict_fn(inference.input_fn(json.dumps(ONE_IMAGE), "application/json"), model)
    with pytest.raises(inference.InvalidInput, match="answers application/json") as error:
        inference.output_fn(probabilities, "text/csv")
    assert error.value.status_code == 406


def test_in_the_serving_container_invalid_input_is_a_toolkit_error_with_its_status(monkeypatch) -> None:
    """SageMaker's inference toolkit answers a BaseInferenceToolkitError with its status code."""

    class BaseInferenceToolkitError(Exception):  # the toolkit's class, as sagemaker_inference defines it
        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            self.status_code, self.message, self.phrase = status_code, message, phrase
            super().__init__(status_code, message, phrase)

    toolkit = types.ModuleType("sagemaker_inference")
    toolkit.errors = types.ModuleType("sagemaker_inference.errors")
    toolkit.errors.BaseInferenceToolkitError = BaseInferenceToolkitError
    monkeypatch.setitem(sys.modules, "sagemaker_inference", toolkit)
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", toolkit.errors)
    spec = importlib.util.spec_from_file_location("inference_in_container", inference.__file__)
    in_container = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(in_container)

    with pytest.raises(BaseInferenceToolkitError) as error:
        in_container.input_fn(b"[]", "application/json")
    assert isinstance(error.value, ValueError)
    assert (error.value.status_code, error.value.message) == (400, str(error.value))
    assert "batch is empty" in error.value.phrase


# --- Inputs a review broke: each gets the right digits or a clear 4xx, never a bare exception ---------


def npy_header(shape: tuple[int, ...], descr: str = "<f8", version: tuple[int, int] = (1, 0)) -> bytes:
    """The header numpy.save writes for an array of `shape` and dtype `descr`, without the array's bytes."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    write = np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0
    write(buffer, header)
    return buffer.getvalue()


def npz_bytes(compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, images=np.zeros((1, 784), dtype=np.uint8))
    return buffer.getvalue()


ONE_ROW = [0] * 783
REVIEWED_BAD_REQUESTS = {
    # JSON numbers too large to convert
    "integer of 5,000 digits": (b"[[" + b"9" * 5000 + b", 0" * 783 + b"]]", "application/json", 400, "too large"),
    "integer above int64": (json.dumps([[2**64, *ONE_ROW]]).encode(), "application/json", 400, "must lie in"),
    "integer below int64": (json.dumps([[-(2**63) - 1, *ONE_ROW]]).encode(), "application/json", 400, "must lie in"),
    "integer too large for a float": (
        json.dumps([[1.5, 10**400, *ONE_ROW[1:]]]).encode(), "application/json", 400, "too large"
    ),
    "float above float32": (json.dumps([[1e300, *ONE_ROW]]).encode(), "application/json", 400, "too large"),
    # booleans mixed into numeric pixels
    "true among integers": (json.dumps([[True, *ONE_ROW]]).encode(), "application/json", 400, "true or false"),
    "false among floats": (json.dumps([[0.5] * 783 + [False]]).encode(), "application/json", 400, "true or false"),
    "true in a 28 x 28 image": (json.dumps([[[0] * 27 + [True]] + [[0] * 28] * 27]).encode(), "application/json", 400,
                                "true or false"),
    # an .npz archive sent as .npy
    "npz archive": (npz_bytes(compressed=False), "application/x-npy", 400, r"\.npz archive"),
    "compressed npz archive": (npz_bytes(compressed=True), "application/x-npy", 400, r"\.npz archive"),
    # .npy headers that declare what the body does not hold
    "npy declaring 10**12 images": (npy_header((10**12, 784)), "application/x-npy", 413, "limit is 1,000"),
    "npy declaring 10**12 pixels per image": (
        npy_header((1, 10**12)), "application/x-npy", 400, "28 x 28 or rows of 784"
    ),
    "npy declaring 1,000 images, holding none": (npy_header((1000, 784)), "application/x-npy", 400, "holds 0 after"),
    "npy declaring two images, holding one": (
        npy_header((2, 784), "|u1") + bytes(784), "application/x-npy", 400, "declares 1,568 bytes.*holds 784"
    ),
    "two arrays saved one after the other": (
        npy_bytes(np.zeros((1, 784), np.uint8)) * 2, "application/x-npy", 400, "holds 912 bytes more"
    ),
    "npy of booleans": (npy_bytes(np.ones((1, 784), dtype=bool)), "application/x-npy", 400, "must be numbers"),
    "npy of a structured dtype": (npy_header((1, 784), [("x", "<f4")]) + bytes(4 * 784), "application/x-npy", 400,
                                  "must be numbers"),
    "npy of one number": (npy_bytes(np.float64(3)), "application/x-npy", 400, "batch is empty"),
    "npy with a damaged header": (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8',  ", "application/x-npy", 400,
                                  "not a readable .npy"),
    "npy of an unknown format version": (b"\x93NUMPY\x09\x00" + bytes(20), "application/x-npy", 400,
                                         "not a readable .npy"),
}


@pytest.mark.parametrize(
    "body, content_type, status, message", REVIEWED_BAD_REQUESTS.values(), ids=REVIEWED_BAD_REQUESTS.keys()
)
def test_inputs_the_review_broke_raise_a_clear_client_error(
    body: bytes, content_type: str, status: int, message: str
) -> None:
    with pytest.raises(inference.InvalidInput, match=message) as error:
        inference.input_fn(body, content_type)
    assert error.value.status_code == status


def test_booleans_are_refused_but_the_words_true_and_false_elsewhere_are_not_mistaken_for_them() -> None:
    """A body whose array is numeric cannot hold strings, so `true` or `false` in it can only be a boolean."""
    spaced = b"[ [" + b" 0 ," * 783 + b" 255 ] ]"
    assert inference.input_fn(spaced, "application/json").shape == (1, 28, 28)
    with pytest.raises(inference.InvalidInput, match="must be numbers"):
        inference.input_fn(json.dumps([["true"] * 784]).encode(), "application/json")


@pytest.mark.parametrize("shape", [(1000, 784), (1000, 28, 28), (10**12, 784)], ids=str)
def test_an_npy_header_is_checked_before_memory_is_allocated(shape: tuple[int, ...]) -> None:
    """numpy.load would allocate the declared array (6 MB to petabytes here) before finding the body short."""
    body = npy_header(shape)
    tracemalloc.start()
    try:
        with pytest.raises(inference.InvalidInput):
            inference.input_fn(body, "application/x-npy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"{peak:,} bytes allocated for a {len(body)}-byte body"


def test_npy_arrays_in_every_byte_order_and_layout_decode_to_the_same_images(test_digits) -> None:
    images = test_digits[0][:4].numpy()
    expected = torch.from_numpy(images.astype(np.float32))
    arrays = {
        "version 2.0 header": npy_header((4, 28, 28), "|u1", version=(2, 0)) + images.tobytes(),
        "big-endian int32": npy_bytes(images.astype(">i4")),
        "Fortran order": npy_bytes(np.asfortranarray(images)),
        "float16 scaled": npy_bytes((images / 255).astype(np.float16)),
    }
    for name, body in arrays.items():
        torch.testing.assert_close(inference.input_fn(body, "application/x-npy"), expected, atol=0.2, rtol=0, msg=name)


def damaged(data: bytes, generator: np.random.Generator, after: int) -> bytes:
    """`data` with five bytes after the first `after` replaced by random ones."""
    copy = bytearray(data)
    for position in generator.integers(after, len(copy), size=5):
        copy[position] = int(generator.integers(256))
    return bytes(copy)


def test_truncated_or_damaged_pictures_are_refused_or_decoded_never_a_bare_exception(test_digits) -> None:
    """Every cut and 200 seeded random damages of a PNG and a JPEG: an image or InvalidInput, nothing else."""
    digit = np.asarray(Image.fromarray(255 - test_digits[0][0].numpy()).resize((120, 120)))
    generator = np.random.default_rng(20261201)
    outcomes = collections.Counter()
    for fmt, content_type in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        data = picture_bytes(digit, fmt)
        bodies = [data[:cut] for cut in range(9, len(data) - 1, 7)]
        bodies += [damaged(data, generator, after=8) for _ in range(200)]
        for body in bodies:
            try:
                image = inference.input_fn(body, content_type)
            except inference.InvalidInput as error:
                assert error.status_code == 400, str(error)
                outcomes[fmt, "refused"] += 1
            else:
                assert image.shape == (1, 28, 28) and 0 <= image.min() and image.max() <= 255
                outcomes[fmt, "decoded"] += 1
    # PNG's checksums catch every damage and cut; JPEG has none, so a damaged JPEG may still decode.
    assert outcomes["PNG", "decoded"] == 0
    assert outcomes["JPEG", "refused"] > 0


DAMAGED_PICTURES = {
    "PNG cut inside its signature chunk": lambda png, jpeg: png[:20],
    "PNG with one byte of its pixel data changed": lambda png, jpeg: png[:60] + bytes([png[60] ^ 0xFF]) + png[61:],
    "PNG without its end chunk": lambda png, jpeg: png[:-12],
    "JPEG cut after its header": lambda png, jpeg: jpeg[:200],
    "JPEG cut in its first bytes": lambda png, jpeg: jpeg[:40],
}


@pytest.mark.parametrize("cut", DAMAGED_PICTURES.values(), ids=DAMAGED_PICTURES.keys())
def test_a_damaged_picture_is_a_client_error(cut, test_digits) -> None:
    digit = np.asarray(Image.fromarray(255 - test_digits[0][0].numpy()).resize((120, 120)))
    png, jpeg = picture_bytes(digit, "PNG"), picture_bytes(digit, "JPEG")
    body = cut(png, jpeg)
    with pytest.raises(inference.InvalidInput, match="not a readable|cannot be decoded") as error:
        inference.input_fn(body, "image/png" if body.startswith(b"\x89PNG") else "image/jpeg")
    assert error.value.status_code == 400


def sixteen_bit_png(levels: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of uint16 `levels`."""
    buffer = io.BytesIO()
    Image.fromarray(levels.astype(np.uint16)).save(buffer, "PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "I;16"
    return buffer.getvalue()


def test_16_bit_greyscale_pngs_are_scaled_not_clipped(model, test_digits) -> None:
    images, labels = test_digits[0][:100].numpy(), test_digits[1][:100]
    variants = {
        "16-bit, light on dark": lambda image: sixteen_bit_png(image.astype(np.uint32) * 257),
        "16-bit, dark on light": lambda image: sixteen_bit_png((255 - image.astype(np.uint32)) * 257),
        "12 bits used of 16": lambda image: sixteen_bit_png(image.astype(np.uint32) * 16),
    }
    eight_bit = torch.cat([inference.input_fn(picture_bytes(image, "PNG"), "image/png") for image in images])
    for name, encode in variants.items():
        decoded = torch.cat([inference.input_fn(encode(image), "image/png") for image in images])
        torch.testing.assert_close(decoded, eight_bit, atol=3, rtol=0, msg=name)
        assert accuracy(inference.predict_fn(decoded, model), labels) >= 0.9, name


# How a camera stores a picture for each EXIF orientation (1 upright, 2-8): the transposition that undoes
# what the viewer applies, so that the picture is upright once the viewer (or input_fn) applies it.
STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
EXIF_ORIENTATION = 0x0112


def photo_bytes(upright: np.ndarray, orientation: int, fmt: str) -> bytes:
    """The picture as a phone stores it: pixels turned for `orientation`, with the EXIF tag that turns them back."""
    picture = Image.fromarray(upright).transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_a_photo_is_turned_upright_by_its_exif_orientation(model, test_digits, orientation: int, fmt: str) -> None:
    images, labels = test_digits[0][:50].numpy(), test_digits[1][:50]
    content_type = f"image/{fmt.lower()}"
    big = [np.asarray(Image.fromarray(255 - image).resize((84, 84))) for image in images]  # dark ink, as photographed
    turned = torch.cat([inference.input_fn(photo_bytes(image, orientation, fmt), content_type) for image in big])
    assert accuracy(inference.predict_fn(turned, model), labels) >= 0.9
    if fmt == "PNG":  # lossless: exactly the upright picture's digits
        upright = torch.cat([inference.input_fn(picture_bytes(image, "PNG"), content_type) for image in big])
        torch.testing.assert_close(turned, upright, atol=0, rtol=0)


# --- Model loading ---------------------------------------------------------------------------------


class WritesMarkerWhenUnpickled:
    """An object whose unpickling runs code: it opens (creates) a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def test_model_fn_refuses_a_malicious_pickle_planted_in_the_model_artifact(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    torch.save(WritesMarkerWhenUnpickled(marker), tmp_path / "model.pt")
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "model.pt", arcname="model.pt")
    model_dir = tmp_path / "opt-ml-model"  # SageMaker extracts model.tar.gz here before calling model_fn
    with tarfile.open(tmp_path / "model.tar.gz") as archive:
        archive.extractall(model_dir, filter="data")

    with pytest.raises(RuntimeError, match=r"model\.pt refused: it holds objects other than tensors"):
        inference.model_fn(str(model_dir))
    assert not marker.exists()


def test_model_fn_names_the_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.pt not found"):
        inference.model_fn(str(tmp_path))


# --- TorchScript -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # PyTorch 2.14 points to torch.export instead
def test_torchscript_export_matches_the_eager_model(model, test_digits, tmp_path: Path) -> None:
    images = normalise(test_digits[0])
    torch.jit.save(torch.jit.trace(model.network, images[:8]), tmp_path / "model.ts")
    scripted = torch.jit.load(tmp_path / "model.ts")
    with torch.inference_mode():
        difference = (scripted(images) - model(images)).abs().max().item()
    assert difference <= 1e-5


# --- The in-process endpoint -----------------------------------------------------------------------


def port_is_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def endpoint(model_dir: Path, local_aws: LocalAWS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The handlers served by ModelBuilder in IN_PROCESS mode (a FastAPI server on 127.0.0.1:9007)."""
    if port_is_taken(IN_PROCESS_PORT):
        pytest.fail(f"127.0.0.1:{IN_PROCESS_PORT} is taken; the SDK's in-process server always listens there")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in local_aws.env.items():  # build() asks the session for its default bucket
            patch.setenv(name, value)
        from sagemaker.serve.builder.schema_builder import SchemaBuilder
        from sagemaker.serve.mode.function_pointers import Mode
        from sagemaker.serve.model_builder import ModelBuilder

        sample_output = {"predictions": [{"digit": 0, "probabilities": [0.1] * 10}]}
        schema = SchemaBuilder(sample_input=json.dumps(ONE_IMAGE).encode(), sample_output=sample_output)
        builder = ModelBuilder(
            inference_spec=inference.in_process_spec(model_dir),
            schema_builder=schema,
            mode=Mode.IN_PROCESS,
            model_path=str(tmp_path_factory.mktemp("model-builder")),
            log_level=logging.WARNING,
        )
        builder.build()
        served = builder.deploy()
    server = served.in_process_mode_obj.server
    try:
        assert server.server.started, "the in-process server did not start"
        yield served
    finally:
        served.in_process_mode_obj.destroy_server()


def invoke_url(endpoint) -> str:
    server = endpoint.in_process_mode_obj.server
    return f"http://{server.host}:{server.port}/invoke"


def test_the_in_process_endpoint_listens_on_loopback_only(endpoint) -> None:
    listeners = endpoint.in_process_mode_obj.server.server.servers  # the uvicorn server's asyncio servers
    addresses = {sock.getsockname()[0] for listener in listeners for sock in listener.sockets}
    assert addresses == {"127.0.0.1"}


def test_the_endpoint_recognises_real_digits_sent_in_every_format(endpoint, test_digits) -> None:
    images, labels = test_digits

    def digits(body: bytes, content_type: str) -> list[int]:
        response = endpoint.invoke(body=body, content_type=content_type, accept="application/json")
        return [prediction["digit"] for prediction in response.body["predictions"]]

    predicted = []
    for start in range(0, len(images), 250):
        predicted += digits(json.dumps(images[start : start + 250].tolist()).encode(), "application/json")
    assert np.mean(np.array(predicted) == labels.numpy()) >= 0.90
    assert digits(npy_bytes(images[:20].numpy()), "application/x-npy") == predicted[:20]
    scaled_rows = (images[:20].numpy() / 255).reshape(20, 784)
    assert digits(json.dumps(scaled_rows.tolist()).encode(), "application/json") == predicted[:20]
    assert digits(picture_bytes(255 - images[0].numpy(), "JPEG", quality=95), "image/jpeg") == [int(labels[0])]
    assert digits(HAND_DRAWN_7.read_bytes(), "image/png") == [7]


# The in-process server does not pass the Content-Type on (see inference.in_process_spec): bodies
# whose type cannot be told from their bytes are left out.
ENDPOINT_BAD_REQUESTS = {
    name: request
    for name, request in BAD_REQUESTS.items()
    if name not in ("JPEG sent as PNG", "unsupported content type", "empty body")
}
ENDPOINT_BAD_REQUESTS["a GIF"] = (b"GIF89a\x01\x00\x01\x00", "image/gif", 415, "not JSON, .npy, PNG or JPEG")
ENDPOINT_BAD_REQUESTS["empty body"] = (b"", "application/json", 400, "body is empty")


def test_the_endpoint_answers_bad_requests_with_client_errors_and_keeps_serving(endpoint, test_digits) -> None:
    url, as_json = invoke_url(endpoint), {"Content-Type": "application/json"}
    good = json.dumps(test_digits[0][:1].tolist()).encode()
    expected = requests.post(url, data=good, headers=as_json, timeout=30).json()
    for name, (body, content_type, status, message) in ENDPOINT_BAD_REQUESTS.items():
        response = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text[:200]}"
        assert message in response.json()["detail"], name
        after = requests.post(url, data=good, headers=as_json, timeout=30)
        assert after.json() == expected, f"not serving after {name}"
    # Through the SDK's client, the refusal surfaces as an exception naming the client error.
    with pytest.raises(Exception, match="400 Client Error"):
        endpoint.invoke(body=b"[[0, 0", content_type="application/json", accept="application/json")
    assert endpoint.invoke(body=good, content_type="application/json", accept="application/json").body == expected


def test_the_endpoint_answers_1000_requests_at_concurrency_8_without_error(endpoint, test_digits) -> None:
    url = invoke_url(endpoint)
    bodies = [json.dumps(image[None].tolist()).encode() for image in test_digits[0]]

    def timed_request(body: bytes) -> tuple[int, float]:
        start = time.perf_counter()
        status = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30).status_code
        return status, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(timed_request, bodies))
    statuses = [status for status, _ in results]
    assert statuses == [200] * len(bodies)
    latencies_ms = np.array([seconds for _, seconds in results]) * 1e3
    p50, p99 = np.percentile(latencies_ms, [50, 99])
    print(f"{len(bodies):,} requests at concurrency 8: p50 {p50:.1f} ms, p99 {p99:.1f} ms")  # shown with -s
