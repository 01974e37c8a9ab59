"""The model picker, mode choice and settings form, all generated from the catalog.

Gradio needs a fixed set of components, so each model gets its own group of inputs, shown
only while that model is picked. The seed is one shared input with a "randomize" box, since
every model that has a seed treats it the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from image2model.config import Settings
from image2model.jobs.model import Mode
from image2model.providers.catalog import SEED_MAX, ModelSpec, Param, availability, catalog
from image2model.jobs.service import get_default_model_id

MODE_CHOICES = [("One model per image", Mode.PER_IMAGE.value),
                ("One model from several views", Mode.MULTI_VIEW.value)]
FAL_HINT = ("More models (TRELLIS, Hunyuan3D, Tripo, Rodin and others, which run on FAL.AI) appear here once "
            "you paste your FAL.AI key under **Your own FAL.AI key**, or once whoever runs this site adds one.")
OWN_KEY_INFO = ("Optional. FAL models then run on your FAL.AI account, not this server's, and its hourly limit "
                "does not apply. Your key is kept sealed only while your job runs, and never shown.")


def available_models(settings: Settings, own_key: bool = False) -> list[ModelSpec]:
    return [spec for spec in catalog().values() if availability(spec, settings.fal_configured or own_key)[0]]


def model_choices(settings: Settings, own_key: bool = False) -> list[tuple[str, str]]:
    """Each model by its short name: a description in the picker was cut off at laptop width
    and said again in full just below it (model_info)."""
    return [(spec.label, spec.id) for spec in available_models(settings, own_key)]


def model_info(spec: ModelSpec) -> str:
    """The picked model's description (the picker may cut it short), its time and its price."""
    parts = [f"about {spec.typical_seconds:g} s per model"]
    if spec.price:
        parts.append("free" if spec.price == "free" else f"{spec.price} per model on FAL.AI")
    return f"{spec.description} ({', '.join(parts)})"


def mode_props(spec: ModelSpec, current: str | None = None) -> dict[str, Any]:
    """The mode choice for a model: fixed when it only has one, with the view order shown."""
    modes = [m.value for m in spec.modes]
    value = current if current in modes else modes[0]
    if spec.multi_view:
        count = (f"{spec.min_views}" if spec.min_views == spec.max_views
                 else f"{spec.min_views} to {spec.max_views}")
        info = f"Several views: upload {count} photos of one object. Order: {spec.view_order}"
    else:
        info = "This model makes one model from each image."
    return {"value": value, "interactive": len(modes) > 1, "info": info}


# Plainer names for parameters whose API names are jargon; others are shown as their name.
PARAM_LABELS = {
    "ss_guidance_strength": "Shape guidance", "ss_sampling_steps": "Shape steps",
    "slat_guidance_strength": "Detail guidance", "slat_sampling_steps": "Detail steps",
    "mc_resolution": "Shape detail", "bg_tolerance": "Background tolerance", "pbr": "Realistic materials",
    "enable_pbr": "Realistic materials", "TAPose": "T/A pose", "use_hyper": "Extra detail (hyper)",
    "do_remove_background": "Remove background", "multiimage_algo": "How views are combined",
    "num_inference_steps": "Refinement passes", "octree_resolution": "Shape detail", "resolution": "Shape detail", "detail": "Surface texture",
    "face_count": "Triangles", "face_limit": "Most triangles", "decimation_target": "Triangles",
    "polygon_type": "Face shape", "generate_type": "Kind of model", "texture_size": "Texture size", "textured_mesh": "Add colours", "guidance_scale": "Follow the photo",
}


def param_label(param: Param) -> str:
    return PARAM_LABELS.get(param.name) or param.name.replace("_", " ").strip().capitalize()


def param_elem_id(model_id: str, param: Param) -> str:
    return "param-" + re.sub(r"[^a-z0-9]+", "-", model_id.lower()) + "-" + param.name


def param_input(param: Param, elem_id: str) -> gr.components.Component:
    """The input that fits a typed parameter, with its range, default and help."""
    common: dict[str, Any] = {"label": param_label(param), "info": param.help, "elem_id": elem_id}
    if param.type == "bool":
        return gr.Checkbox(value=bool(param.default), **common)
    if param.type == "choice":
        return gr.Dropdown(choices=list(param.choices or ()), value=param.default, **common)
    if param.type == "string":
        return gr.Textbox(value=param.default or "", max_length=2000, **common)
    precision = 0 if param.type == "int" else None
    if param.optional or param.minimum is None or param.maximum is None:
        return gr.Number(value=param.default, precision=precision, minimum=param.minimum, maximum=param.maximum,
                         step=param.step or 1, **common)
    return gr.Slider(minimum=param.minimum, maximum=param.maximum, value=param.default,
                     step=param.step or (1 if param.type == "int" else 0.01), **common)


@dataclass
class ParamForm:
    """The settings inputs of every model, and how to read one model's values back."""

    groups: dict[str, gr.Group] = field(default_factory=dict)
    fields: dict[str, list[tuple[Param, gr.components.Component]]] = field(default_factory=dict)

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [component for fields in self.fields.values() for _, component in fields]

    def values(self, model_id: str, flat: list[Any]) -> dict[str, Any]:
        """This model's settings from the flat list of all inputs' values (seed excluded)."""
        chosen: dict[str, Any] = {}
        position = 0
        for spec_id, fields in self.fields.items():
            for param, _ in fields:
                if spec_id == model_id:
                    chosen[param.name] = clean_value(param, flat[position])
                position += 1
        return chosen

    def reset(self, model_id: str) -> list[Any]:
        """Updates for all groups and inputs: only this model's group shown, at its defaults."""
        updates: list[Any] = [gr.update(visible=spec_id == model_id) for spec_id in self.groups]
        for spec_id, fields in self.fields.items():
            for param, _ in fields:
                updates.append(gr.update(value=param.default) if spec_id == model_id else gr.skip())
        return updates


def clean_value(param: Param, value: Any) -> Any:
    """Form values in the parameter's type: sliders give floats, empty numbers give None."""
    if value is None or value == "":
        return None if param.optional or param.type != "string" else ""
    if param.type == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def build_form(specs: list[ModelSpec], selected: str) -> ParamForm:
    """One hidden group of inputs per model (the seed lives outside, shared)."""
    form = ParamForm()
    for spec in specs:
        params = [p for p in spec.params if p.name != "seed"]
        with gr.Group(visible=spec.id == selected) as group:
            if not params:
                gr.Markdown("This model has no settings.")
            form.fields[spec.id] = [(param, param_input(param, param_elem_id(spec.id, param))) for param in params]
        form.groups[spec.id] = group
    return form


def seed_param(spec: ModelSpec) -> Param | None:
    return spec.param("seed")


def seed_update(spec: ModelSpec) -> tuple[Any, Any]:
    """(row visibility, seed input) for a model: hidden when it takes no seed."""
    param = seed_param(spec)
    if param is None:
        return gr.update(visible=False), gr.update(value=None)
    return gr.update(visible=True), gr.update(value=None, maximum=int(param.maximum or SEED_MAX))


def options_for(spec: ModelSpec, form: ParamForm, flat: list[Any], seed: Any, randomize: bool) -> dict[str, Any]:
    """The options object a job gets: this model's settings plus the seed (None = random)."""
    options = form.values(spec.id, flat)
    if seed_param(spec) is not None:
        # typed and range-checked by the catalog, like every option (int() of inf would raise)
        options["seed"] = None if randomize or seed in (None, "") else clean_value(seed_param(spec), seed)
    return options


def default_model(settings: Settings) -> str:
    return get_default_model_id(settings)
