"""Work Hydra does on every start that the runner's start need not pay for; the composed config
is the same with or without these (benchmarks/startup.py measures the start; tests/config/
test_hydra_startup.py checks the sameness).

- ``hydra.mode`` probe: Hydra composes the whole config once only to read ``hydra.mode``
  (``Hydra.get_mode``), then again to run.
- Structured configs built when loaded: ``ConfigStore.store`` builds a dataclass's config node
  at once (``OmegaConf.structured``) and ``ConfigStore.load`` deep-copies it on every load; a
  dataclass is now built on its load instead, which is that copy (and the launcher configs of
  plugins nobody selects are never built).
- The ConfigStore is not deep-copied with the config repository Hydra copies per composition.
- YAML parsed by libyaml: OmegaConf reads every config file with PyYAML's pure-Python loader.

``install`` is called once, by ``runner.app.main``, before anything is registered or composed.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Callable, List, Optional, Tuple

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


def install(argv: List[str]) -> None:
    skip_mode_probe(argv)
    build_structured_on_load()
    share_config_store()
    parse_yaml_with_libyaml()


def skip_mode_probe(argv: List[str]) -> None:
    """The first of Hydra's two compositions only reads ``hydra.mode``: a third of ``mode=plan``'s
    time. The runner's configs never set ``hydra.mode``, so unless the command line names it, the
    answer is what ``-m`` says, and the first composition is skipped (``None`` is Hydra's own
    "not set": ``-m`` then means MULTIRUN, else RUN)."""
    if any("hydra.mode" in arg for arg in argv):
        return
    from hydra._internal.hydra import Hydra

    Hydra.get_mode = lambda self, config_name, overrides: None


class Structured:
    """A dataclass's config node until Hydra loads it: ``ConfigStore.load`` deep-copies what it
    stores, and this copy is ``OmegaConf.structured`` of the class, as ``store`` would have built."""

    def __init__(self, schema: type):
        self.schema = schema

    def __deepcopy__(self, memo: Any) -> Any:
        return OmegaConf.structured(self.schema)


def build_structured_on_load() -> None:
    """``ConfigStore.store`` of a dataclass (the class, not an instance, which could still change)
    keeps a :class:`Structured` in place of the built node. Anything else is stored as before."""
    store = ConfigStore.store
    if getattr(store, "builds_on_load", False):
        return

    def store_lazily(
        self: ConfigStore,
        name: str,
        node: Any,
        group: Optional[str] = None,
        package: Optional[str] = None,
        provider: Optional[str] = None,
    ) -> None:
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return store(self, name, node, group=group, package=package, provider=provider)
        # Hydra's own store lays out the group and the name; then the node is swapped
        store(self, name, {}, group=group, package=package, provider=provider)
        self._open(group or "")[name if name.endswith(".yaml") else f"{name}.yaml"].node = Structured(node)

    store_lazily.builds_on_load = True  # type: ignore[attr-defined]
    ConfigStore.store = store_lazily  # type: ignore[method-assign]


def share_config_store() -> None:
    """Hydra deep-copies its config repository at the start of every composition, and with it the
    ConfigStore singleton (every registered node). What it copies the repository for is its list
    of sources; the store it reads from is ``ConfigStore.instance()``, whose loads are copies."""
    ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]


def parse_yaml_with_libyaml() -> None:
    """OmegaConf's YAML loader on libyaml's parser, where PyYAML has it. A document libyaml does not
    take (or one with a duplicate key) is read again by OmegaConf's own loader, so an error, its
    message and its position are what they were; so is any document the two would read apart."""
    from omegaconf import _utils

    if not getattr(yaml, "__with_libyaml__", False) or getattr(_utils.get_yaml_loader, "libyaml", False):
        return
    python_loader = _utils.get_yaml_loader()  # the class OmegaConf builds on each call: once
    fast = _libyaml_loader(python_loader)

    def get_yaml_loader() -> Any:
        return fast

    get_yaml_loader.libyaml = True  # type: ignore[attr-defined]
    _utils.get_yaml_loader = get_yaml_loader


def _libyaml_loader(python_loader: Any) -> type:
    scalar_tag = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG

    class LibyamlLoader(yaml.CSafeLoader):
        yaml_implicit_resolvers = python_loader.yaml_implicit_resolvers  # OmegaConf's: no timestamps

        def __init__(self, stream: Any):
            document, self.replay = _replayable(stream)
            super().__init__(document)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            keys = [key.value for key, _ in node.value if key.tag == scalar_tag]
            if len(keys) != len(set(keys)):  # OmegaConf refuses it; its loader says where
                raise yaml.constructor.ConstructorError(None, None, "duplicate key", node.start_mark)
            return super().construct_mapping(node, deep=deep)

        def get_single_data(self) -> Any:
            try:
                return super().get_single_data()
            except yaml.YAMLError:
                pass
            return yaml.load(self.replay(), Loader=python_loader)

    return LibyamlLoader


def _replayable(stream: Any) -> Tuple[Any, Callable[[], Any]]:
    """The document's text, and the document as PyYAML was given it, as often as asked: the text
    itself, or the file (read once) as a file of the same name again (PyYAML's marks name it)."""
    if isinstance(stream, (str, bytes)):
        return stream, lambda: stream
    data = stream.read()
    name = getattr(stream, "name", None)

    def again() -> Any:
        copy = io.StringIO(data) if isinstance(data, str) else io.BytesIO(data)
        if name is not None:
            copy.name = name  # type: ignore[misc]
        return copy

    return data, again
