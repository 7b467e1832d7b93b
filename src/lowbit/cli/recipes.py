"""``lowbit recipes``: the shipped recipes, one fully resolved, or the recipe JSON schema."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("recipes", help="list the shipped recipes")
    parser.add_argument("name", nargs="?", help="print this recipe, fully resolved, as YAML")
    parser.add_argument("--schema", action="store_true", help="print the recipe JSON schema")
    return parser


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..recipes import list_recipes, load_recipe, recipe_schema

    if args.schema:
        print(json.dumps(recipe_schema(), indent=2))
        return 0
    if args.name:
        print(yaml.safe_dump(load_recipe(args.name).to_dict(), sort_keys=False), end="")
        return 0
    recipes = list_recipes()
    width = max(len(r.name) for r in recipes)
    for recipe in recipes:
        print(f"{recipe.name:<{width}}  {recipe.summary} [{recipe.paper}]")
    return 0
