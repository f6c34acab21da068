"""Text in images: PP-OCRv4 through rapidocr on onnxruntime, models verified at build and loaded from disk."""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .settings import Settings

log = logging.getLogger("xl_multimodal.ocr")

MODEL_FILES = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
               "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
WARM_UP_TEXT = "XleRobot 42"


class ImageError(ValueError):
    """An upload that is not an image this service reads."""


@dataclass(frozen=True)
class Reading:
    text: str
    lines: int
    seconds: float


def render_text(text: str, size: tuple[int, int] = (640, 200), font_px: int = 40) -> bytes:
    """A PNG of dark text (one or more lines) on white: the warm-up input, and what tests send."""
    image = Image.new("RGB", size, "white")
    lines = text.count("\n") + 1
    ImageDraw.Draw(image).multiline_text((20, (size[1] - lines * font_px * 1.25) // 2), text, fill="black",
                                         font=ImageFont.load_default(size=font_px), spacing=font_px // 4)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB pixels of an uploaded image; ImageError naming the problem for anything else."""
    if not data:
        raise ImageError("image is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in IMAGE_FORMATS:
                raise ImageError(f"image format {image.format} is not one of {', '.join(IMAGE_FORMATS)}")
            width, height = image.size
            # Checked before decoding the pixels, so a small file that claims a huge canvas costs nothing.
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height} pixels, the limit is {max_pixels} pixels")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"image could not be decoded: {exc}") from exc


class Engine:
    """Loads the OCR models once and reads images; ready only after a warm-up reading came back right."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model_name = "pp-ocrv4"
        self.ready = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self._ocr: object | None = None
        # onnxruntime sessions are not meant to be shared by concurrent runs of one pipeline.
        self._lock = threading.Lock()

    def load(self) -> None:
        started = time.perf_counter()
        try:
            from rapidocr_onnxruntime import RapidOCR

            model_dir = Path(self.settings.ocr_model_dir)
            missing = [name for name in MODEL_FILES.values() if not (model_dir / name).is_file()]
            if missing:
                raise FileNotFoundError(f"OCR model files missing in {model_dir}: {', '.join(missing)}")
            threads = self.settings.ocr_threads
            self._ocr = RapidOCR(
                det_model_path=str(model_dir / MODEL_FILES["det"]), rec_model_path=str(model_dir / MODEL_FILES["rec"]),
                cls_model_path=str(model_dir / MODEL_FILES["cls"]), intra_op_num_threads=threads,
                inter_op_num_threads=1)
            reading = self.read(decode_image(render_text(WARM_UP_TEXT), self.settings.max_image_pixels))
            if "42" not in reading.text:
                raise RuntimeError(f"warm-up reading of {WARM_UP_TEXT!r} came back as {reading.text!r}")
        except Exception as exc:  # noqa: BLE001 - any load failure must show in /readyz, not kill the process
            self.load_error = f"OCR model failed to load: {exc}"
            log.error("model load failed", extra={"error": str(exc)})
            return
        self.load_seconds = time.perf_counter() - started
        if self.settings.faults.never_ready:
            log.warning("fault injected: never_ready; staying unready")
            return
        self.ready = True
        log.info("model ready", extra={"model": self.model_name, "seconds": round(self.load_seconds, 3)})

    def read(self, pixels: np.ndarray) -> Reading:
        """The text lines found in the image (RGB pixels from decode_image), joined by spaces."""
        if self._ocr is None:
            raise RuntimeError("OCR model is not loaded")
        started = time.perf_counter()
        with self._lock:
            result, _ = self._ocr(pixels)  # type: ignore[operator]
        lines = [str(item[1]) for item in result or []]
        return Reading(text=" ".join(lines), lines=len(lines), seconds=time.perf_counter() - started)
