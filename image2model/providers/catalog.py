"""The model catalog: what each model is, how its images are passed, and its typed parameters.

The page builds its form from this, the REST API its JSON Schema, and the job service its
validation, so a parameter is described exactly once.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from image2model.errors import AppError
from image2model.jobs.model import Mode

ParamType = Literal["int", "float", "bool", "choice", "string"]
SEED_MAX = 2**31 - 1
LOCAL_MODEL = "local/relief"
INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,4000}")  # ASCII digits only: "²".isdigit() is True
SHOWN_MAX = 24  # longer values are not repeated back in messages


def number_text(number: float) -> str:
    """2147483647 rather than 2.14748e+09; 0.05 as 0.05."""
    if isinstance(number, int) or (isinstance(number, float) and number.is_integer()):
        return str(int(number))
    return f"{number:g}"


def shown_value(value: Any) -> str:
    """The value as the client sent it, or "the value" when it is too long to repeat."""
    if isinstance(value, int) and value.bit_length() > 64:  # str() of a huge int is slow, or refused
        return "the value"
    text = str(value)
    return text if len(text) <= SHOWN_MAX else "the value"


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # None is allowed and means "not sent" (seed: pick one for me)

    def coerce(self, value: Any) -> Any:
        """The value in this parameter's type, or AppError naming the parameter."""
        if value is None:
            if self.optional:
                return None
            raise self._invalid("a value is required")
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.strip().lower() in ("true", "1", "yes")
            raise self._invalid("expected true or false")
        if self.type == "string":
            if not isinstance(value, str):
                raise self._invalid("expected text")
            if len(value) > 2000:
                raise self._invalid("text is longer than 2000 characters")
            return value
        if self.type == "choice":
            assert self.choices is not None
            for choice in self.choices:
                if value == choice or (not isinstance(value, bool) and str(value) == str(choice)):
                    return choice
            raise self._invalid(f"expected one of {', '.join(map(str, self.choices))}")
        return self._number(value)

    def _number(self, value: Any) -> int | float:
        """A number in range, compared exactly: a 400-digit integer is out of range, not an
        OverflowError, and inf/nan are refused before any comparison."""
        if isinstance(value, bool):
            raise self._invalid("expected a number")
        number: int | float
        if isinstance(value, (int, float)):
            number = value
        elif isinstance(value, str) and INTEGER_TEXT.fullmatch(value.strip()):
            number = int(value.strip())
        else:
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                raise self._invalid("expected a number") from None
        if isinstance(number, float):
            if not math.isfinite(number):
                raise self._invalid("expected a finite number")
            if self.type == "int":
                if not number.is_integer():
                    raise self._invalid("expected a whole number")
                number = int(number)
        if self.minimum is not None and number < self.minimum:
            raise self._invalid(f"{shown_value(value)} is below the minimum {number_text(self.minimum)}")
        if self.maximum is not None and number > self.maximum:
            raise self._invalid(f"{shown_value(value)} is above the maximum {number_text(self.maximum)}")
        return float(number) if self.type == "float" else number

    def range_text(self) -> str:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"from {number_text(low)} to {number_text(high)}"
        if low is not None:
            return f"at least {number_text(low)}"
        if high is not None:
            return f"at most {number_text(high)}"
        return ""

    def _invalid(self, reason: str) -> AppError:
        details: dict[str, Any] = {"parameter": self.name}
        allowed = self.range_text() if self.type in ("int", "float") else ""
        if allowed:
            reason = f"{reason} (allowed: {allowed})"
            details.update(minimum=self.minimum, maximum=self.maximum)
        return AppError("invalid_parameter", f"Parameter '{self.name}': {reason}.", 422, details)

    def json_schema(self) -> dict[str, Any]:
        kinds = {"int": "integer", "float": "number", "bool": "boolean", "string": "string"}
        schema: dict[str, Any] = {"description": self.help, "default": self.default}
        if self.type == "choice":
            schema["enum"] = list(self.choices or ())
        else:
            schema["type"] = kinds[self.type]
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.optional:
            schema = {"anyOf": [schema, {"type": "null"}], "description": self.help, "default": self.default}
        return schema

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "help": self.help,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "step": self.step,
            "choices": list(self.choices) if self.choices else None,
            "optional": self.optional,
        }


@dataclass(frozen=True)
class ModelSpec:
    id: str  # the FAL endpoint id, or "local/..." for models we run ourselves
    label: str
    description: str  # one line for the picker
    provider: Literal["fal", "local"]
    modes: tuple[Mode, ...] = (Mode.PER_IMAGE,)
    image_field: str = "image_url"  # where a single image goes
    image_list: bool = False  # image_field takes a list of URLs
    view_fields: tuple[str, ...] = ()  # multi-view: the named field of each view, in order
    min_views: int = 1
    max_views: int = 1
    view_order: str = ""  # what a person should upload, in order, for multi-view
    mesh_fields: tuple[str, ...] = ("model_mesh",)  # output fields that may hold the model
    preview_fields: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)  # always sent, never user-set
    typical_seconds: float = 60.0
    price: str = ""
    face_param: str = ""  # the parameter that caps the face count, if the model has one

    @property
    def multi_view(self) -> bool:
        return Mode.MULTI_VIEW in self.modes

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate_params(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults filled in, every value checked; a random seed chosen when none is given,
        so the seed actually used is always known."""
        if given is not None and not isinstance(given, dict):
            raise AppError("invalid_parameter", "Options must be a JSON object.", 422)
        given = dict(given or {})
        unknown = [name for name in given if self.param(name) is None]
        if unknown:
            known = ", ".join(p.name for p in self.params) or "none"
            raise AppError(
                "unknown_parameter",
                f"Model {self.id} has no parameter '{unknown[0]}' (its parameters: {known}).",
                422,
                {"parameter": unknown[0]},
            )
        resolved = {p.name: p.coerce(given.get(p.name, p.default)) for p in self.params}
        seed = self.param("seed")
        if seed is not None and resolved.get("seed") is None:
            resolved["seed"] = random.randint(int(seed.minimum or 0), int(seed.maximum or SEED_MAX))
        return resolved

    def with_face_limit(self, params: dict[str, Any] | None, value: str) -> tuple[dict[str, Any] | None, str]:
        """The original API's `face_limit` field, sent to this model's own face-count
        parameter (brought into its range), or left out with a note saying why."""
        if not INTEGER_TEXT.fullmatch(value.strip()):
            raise AppError("invalid_parameter", f"face_limit must be a whole number, not '{shown_value(value)}'.",
                           422, {"field": "face_limit"})
        param = self.param(self.face_param) if self.face_param else None
        if param is None:
            return params, (f"face_limit was ignored: {self.label} has no face-count parameter "
                            f"(its parameters: {', '.join(p.name for p in self.params) or 'none'}).")
        wanted = int(value.strip())
        low, high = int(param.minimum or 1), int(param.maximum or wanted)
        used = min(max(wanted, low), high)
        note = f"face_limit {shown_value(wanted)} was sent as {param.name}={used}"
        if used != wanted:
            note += f", the nearest {self.label} accepts ({param.range_text()})"
        return {**(params or {}), param.name: used}, note + "."

    def fal_arguments(self, image_urls: list[str], params: dict[str, Any], mode: Mode) -> dict[str, Any]:
        """The JSON body FAL expects, with the images in their fields."""
        arguments = {k: v for k, v in params.items() if v is not None}
        arguments.update(self.fixed)
        if mode == Mode.MULTI_VIEW and self.view_fields:
            arguments.update(dict(zip(self.view_fields, image_urls)))
        elif self.image_list:
            arguments[self.image_field] = list(image_urls)
        else:
            arguments[self.image_field] = image_urls[0]
        return arguments

    def to_dict(self, available: bool = True, unavailable_reason: str = "") -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "description": self.description,
            "provider": self.provider,
            "modes": [str(m) for m in self.modes],
            "min_views": self.min_views,
            "max_views": self.max_views,
            "view_order": self.view_order,
            "typical_seconds": self.typical_seconds,
            "price": self.price,
            "available": available,
            "unavailable_reason": unavailable_reason,
            "params": [p.to_dict() for p in self.params],
        }

    def params_json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {p.name: p.json_schema() for p in self.params},
        }


def seed_param(maximum: int = SEED_MAX) -> Param:
    return Param("seed", "int", None, "Random seed; leave empty for a random one (the seed used is shown).",
                 0, maximum, 1, optional=True)


TRELLIS_PARAMS = (
    seed_param(),
    Param("ss_guidance_strength", "float", 7.5, "How closely the shape follows the image.", 0, 10, 0.1),
    Param("ss_sampling_steps", "int", 12, "Work spent on the shape: more is slower and finer.", 1, 50, 1),
    Param("slat_guidance_strength", "float", 3.0, "How closely the detail follows the image.", 0, 10, 0.1),
    Param("slat_sampling_steps", "int", 12, "Work spent on the surface detail: more is slower and finer.", 1, 50, 1),
    Param("mesh_simplify", "float", 0.95, "How much the surface is simplified: higher makes a lighter file with less detail.", 0.9, 0.98, 0.01),
    Param("texture_size", "choice", 1024, "Size in pixels of the colour picture wrapped round the model: bigger is sharper and heavier.", choices=(512, 1024, 2048)),
)

HUNYUAN2_PARAMS = (
    seed_param(),
    Param("num_inference_steps", "int", 50, "Refinement passes: more is slower and cleaner.", 1, 50, 1),
    Param("guidance_scale", "float", 7.5, "How closely the model follows the image.", 0, 20, 0.1),
    Param("octree_resolution", "int", 256, "How fine the shape is: higher gives more detail and takes longer.", 1, 1024, 1),
    Param("textured_mesh", "bool", False, "Add colours to the model (costs three times as much)."),
)

HUNYUAN3_PARAMS = (
    Param("enable_pbr", "bool", False, "Realistic materials: shiny, metal and rough parts catch the light as they should."),
    Param("face_count", "int", 500000, "How many small triangles make up the surface: more is finer and heavier.", 40000, 1500000, 10000),
    Param("generate_type", "choice", "Normal", "Normal: textured; LowPoly; Geometry: shape only.",
          choices=("Normal", "LowPoly", "Geometry")),
    Param("polygon_type", "choice", "triangle", "Triangles or four-sided faces (LowPoly only).", choices=("triangle", "quadrilateral")),
)

TRIPO_PARAMS = (
    seed_param(),
    Param("texture_seed", "int", None, "Seed for the texture; empty for random.", 0, SEED_MAX, 1, optional=True),
    Param("face_limit", "int", None, "Most triangles the surface may have; empty lets Tripo decide.", 500, 500000, 500,
          optional=True),
    Param("texture", "choice", "standard", "Texture quality.", choices=("no", "standard", "HD")),
    Param("pbr", "bool", True, "Realistic materials (shiny, metal, rough parts); replaces the plain colours."),
    Param("texture_alignment", "choice", "original_image", "Align the texture to the image or the shape.",
          choices=("original_image", "geometry")),
    Param("auto_size", "bool", False, "Scale the model to real-world size."),
    Param("orientation", "choice", "default", "Orientation of the model.", choices=("default", "align_image")),
)

RODIN_PARAMS = (
    seed_param(65535),
    Param("prompt", "string", "", "Optional text that describes the object."),
    Param("condition_mode", "choice", "concat", "How several images combine: concat (views of one object) "
          "or fuse.", choices=("concat", "fuse")),
    Param("material", "choice", "PBR", "PBR: realistic materials that catch the light; Shaded: colours with the light painted in.", choices=("PBR", "Shaded")),
    Param("quality", "choice", "medium", "Surface detail: higher is finer and heavier.", choices=("high", "medium", "low", "extra-low")),
    Param("tier", "choice", "Regular", "Regular, or Sketch for a fast draft.", choices=("Regular", "Sketch")),
    Param("TAPose", "bool", False, "Put a human figure in T/A pose."),
    Param("use_hyper", "bool", False, "Extra detail for complex objects."),
)


def _local_params() -> tuple[Param, ...]:
    from image2model.providers.relief import RELIEF_PARAMS

    return tuple(
        Param(p["name"], p["type"], p["default"], p["help"], p.get("minimum"), p.get("maximum"), p.get("step"),
              tuple(p["choices"]) if "choices" in p else None)
        for p in RELIEF_PARAMS
    )


def build_catalog() -> dict[str, ModelSpec]:
    per, multi = Mode.PER_IMAGE, Mode.MULTI_VIEW
    specs = [
        ModelSpec(LOCAL_MODEL, "Offline preview (relief)",
                  "Runs here on the CPU in a second or two: cups, vases and bottles turned round, other objects puffed up; no key needed.",
                  "local", params=_local_params(), typical_seconds=2.0, price="free"),
        ModelSpec("fal-ai/trellis", "TRELLIS", "Microsoft TRELLIS: detailed textured models from one image.",
                  "fal", params=TRELLIS_PARAMS, typical_seconds=30, price="$0.02"),
        ModelSpec("fal-ai/trellis/multi", "TRELLIS multi-view",
                  "TRELLIS from several photos of the same object.", "fal", modes=(multi,),
                  image_field="image_urls", image_list=True, min_views=2, max_views=8,
                  view_order="Any order; put the clearest (front) view first.",
                  params=TRELLIS_PARAMS + (Param("multiimage_algo", "choice", "stochastic",
                                                 "How the views are combined.",
                                                 choices=("stochastic", "multidiffusion")),),
                  typical_seconds=45, price="$0.02"),
        ModelSpec("fal-ai/trellis-2", "TRELLIS.2", "TRELLIS.2: a finely detailed shape with realistic materials.", "fal",
                  mesh_fields=("model_glb",),
                  params=(seed_param(),
                          Param("resolution", "choice", 1024, "How fine the shape is.", choices=(512, 1024, 1536)),
                          Param("texture_size", "choice", 2048, "Size in pixels of the colour picture wrapped round the model: bigger is sharper and heavier.",
                                choices=(1024, 2048, 4096)),
                          Param("decimation_target", "int", 500000, "How many small triangles make up the surface: more is finer and heavier.", 10000, 2000000,
                                10000),
                          Param("remesh", "bool", True, "Rebuild a clean surface.")),
                  face_param="decimation_target", typical_seconds=60, price="about $0.25-0.30"),
        ModelSpec("fal-ai/hunyuan3d/v2", "Hunyuan3D 2", "Tencent Hunyuan3D 2: clean shapes, optional texture.",
                  "fal", image_field="input_image_url", params=HUNYUAN2_PARAMS, typical_seconds=40,
                  price="$0.16 (x3 textured)"),
        ModelSpec("fal-ai/hunyuan3d/v2/multi-view", "Hunyuan3D 2 multi-view",
                  "Hunyuan3D 2 from exactly three photos: front, back, left.", "fal", modes=(multi,),
                  view_fields=("front_image_url", "back_image_url", "left_image_url"), min_views=3, max_views=3,
                  view_order="front, back, left", params=HUNYUAN2_PARAMS, typical_seconds=50,
                  price="$0.16 (x3 textured)"),
        ModelSpec("fal-ai/hunyuan3d-v3/image-to-3d", "Hunyuan3D 3",
                  "Hunyuan3D 3: one photo, or up to four views for a better back side.", "fal",
                  modes=(per, multi), image_field="input_image_url",
                  view_fields=("input_image_url", "back_image_url", "left_image_url", "right_image_url"),
                  min_views=2, max_views=4, view_order="front, back, left, right",
                  mesh_fields=("model_glb", "model_urls.glb"), preview_fields=("thumbnail",),
                  params=HUNYUAN3_PARAMS, face_param="face_count", typical_seconds=90),
        ModelSpec("fal-ai/triposr", "TripoSR", "TripoSR: a quick draft in seconds.", "fal",
                  params=(Param("do_remove_background", "bool", True, "Remove the background first."),
                          Param("foreground_ratio", "float", 0.9, "How much of the frame the object fills.",
                                0.5, 1.0, 0.05),
                          Param("mc_resolution", "int", 256, "How fine the shape is (above 512 is slow and rarely better).",
                                32, 1024, 32)),
                  fixed={"output_format": "glb"}, typical_seconds=10),
        ModelSpec("tripo3d/tripo/v2.5/image-to-3d", "Tripo 2.5", "Tripo 2.5: coloured models with realistic materials.", "fal",
                  mesh_fields=("pbr_model", "model_mesh", "base_model"), preview_fields=("rendered_image",),
                  params=TRIPO_PARAMS, face_param="face_limit", typical_seconds=45),
        ModelSpec("tripo3d/tripo/v2.5/multiview-to-3d", "Tripo 2.5 multi-view",
                  "Tripo 2.5 from two to four views: front, left, back, right.", "fal", modes=(multi,),
                  view_fields=("front_image_url", "left_image_url", "back_image_url", "right_image_url"),
                  min_views=2, max_views=4, view_order="front, left, back, right",
                  mesh_fields=("pbr_model", "model_mesh", "base_model"), preview_fields=("rendered_image",),
                  params=TRIPO_PARAMS, face_param="face_limit", typical_seconds=60),
        ModelSpec("fal-ai/hyper3d/rodin", "Hyper3D Rodin", "Rodin Gen-1: production-quality assets, 1 to 5 images.",
                  "fal", modes=(per, multi), image_field="input_image_urls", image_list=True, min_views=2,
                  max_views=5, view_order="Any order; front view first.", params=RODIN_PARAMS,
                  fixed={"geometry_file_format": "glb"}, typical_seconds=90, price="$0.40"),
    ]
    return {spec.id: spec for spec in specs}


_CATALOG: dict[str, ModelSpec] | None = None


def catalog() -> dict[str, ModelSpec]:
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = build_catalog()
    return _CATALOG


FAL_UNAVAILABLE = ("Needs a FAL.AI key: give your own (the page's FAL key field, `fal_key` in /generate, "
                   "the X-Fal-Key header), or the operator sets FAL_KEY (a secret on a Space).")


def availability(spec: ModelSpec, fal_configured: bool) -> tuple[bool, str]:
    if spec.provider == "fal" and not fal_configured:
        return False, FAL_UNAVAILABLE
    return True, ""


def get_model(model_id: str | None, fal_configured: bool, default_model: str = "") -> ModelSpec:
    """The spec for a model id (the configured default when empty), or AppError naming it."""
    if not model_id:
        model_id = default_model or ("fal-ai/trellis" if fal_configured else LOCAL_MODEL)
    spec = catalog().get(model_id)
    if spec is None:
        known = ", ".join(catalog())
        raise AppError("unknown_model", f"Unknown model '{model_id}'. Known models: {known}.", 422,
                       {"model": model_id})
    available, reason = availability(spec, fal_configured)
    if not available:
        raise AppError("model_unavailable", f"Model '{model_id}' is not available here. {reason}", 422,
                       {"model": model_id})
    return spec
