"""``featcache models``: list the available backbones."""

from __future__ import annotations

from ..backbones import get_backbone, list_backbones
from .parsing import add_command, add_json_option, print_json

__all__ = ["add_models"]


def add_models(sub) -> None:
    p = add_command(sub, "models", help="list the available backbones")
    p.add_argument("--all", action="store_true",
                   help="also list every torchvision and timm model (downloads when online)")
    add_json_option(p)
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    builtin = [{"name": name, "image_size": spec.preprocessing.image_size,
                "description": spec.description}
               for name, spec in ((n, get_backbone(n)) for n in list_backbones())]
    more = {lib: list_backbones(lib) for lib in ("torchvision", "timm")} if args.all else {}
    if args.json:
        print_json({"featcache": builtin, **more})
        return 0
    for b in builtin:
        print(f"{b['name']:<24} {b['image_size']:>4} px  {b['description']}")
    for names in more.values():
        for name in names:
            print(name)
    if not args.all:
        print("\nAlso: any torchvision model ('resnet50', 'torchvision:vit_b_16') and any timm "
              "model ('timm:convnext_tiny'); `featcache models --all` lists them.")
    return 0
