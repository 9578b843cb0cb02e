"""Write docs/recipes.md from the recipe schema itself, so the reference cannot drift from the code.

    python docs/make_recipe_reference.py > docs/recipes.md
"""
from pydantic import BaseModel

from chaincomp.recipe import BaselineConfig, DataConfig, ModelConfig, Recipe
from chaincomp.stages import STAGES


def type_name(t) -> str:
    import re
    if isinstance(t, type) and issubclass(t, BaseModel):
        return "mapping"
    if isinstance(t, type):
        return t.__name__
    s = str(t).replace("typing.", "")
    if "Annotated[Union" in s:
        return "list of stages"
    s = re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], s)
    s = re.sub(r"[\w.]+\.(\w+Config|StudentSpec|LayerBits)", r"\1", s)
    return s.replace(" | ", " or ").replace("NoneType", "null")


def table(model: type[BaseModel]) -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        key = f.alias or name
        ann = type_name(f.annotation)
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        meta = [str(m).replace("(", " ").replace(")", "").split(" ", 1)[-1] for m in f.metadata]
        rows.append(f"| `{key}` | {ann} {' '.join(meta)} | {default} | {f.description or ''} |")
    return "\n".join(rows)


print("# Recipe reference\n\nGenerated from the schema by `python docs/make_recipe_reference.py`. "
      "Unknown keys are errors.\n")
for title, m in [("top level", Recipe), ("data", DataConfig), ("model", ModelConfig), ("baseline", BaselineConfig)]:
    print(f"## {title}\n\n{table(m)}\n")
for tech, stage in STAGES.items():
    doc = (stage.__module__ and __import__(stage.__module__, fromlist=["x"]).__doc__) or ""
    print(f"## chain stage: `{tech}`\n\n{doc.strip()}\n\n{table(stage.Config)}\n")
