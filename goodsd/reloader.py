"""Reload and rollback, as bookkeeping: which roles a new config rolls, the generations that
tell old children from new, when a reload has proven itself, and what going back means.

Nothing here forks, signals or logs: the master asks, then carries out the answer (see
``Master.handle_hup``). A reload rolls a role when a setting its children run with changed,
or code they loaded changed on disk; the new children are then a newer *generation* of the
role. Until every rolled role has *proven* itself (``goodsd.children.proven_roles``), the
config before the reload is kept, so that a reload whose children cannot load their code, or
keep crashing, can be undone whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from goodsd import codestamp
from goodsd.children import Child, Role, State, proven_roles
from goodsd.config import Config


def role_settings(config: Config, role: Role) -> tuple[object, ...]:
    """What a child of ``role`` was started with; a change means rolling its children."""
    common = (
        config.redis,
        config.queue,
        config.pythonpath,
        config.logging,
        config.supervisor.lease,
    )
    if role == Role.CONSUMER:
        return (*common, dataclasses.replace(config.consumers, processes=0))
    return (*common, dataclasses.replace(config.producer, processes=0))


def same_source(old: Config, new: Config) -> bool:
    """Whether producers of ``new`` push what those of ``old`` did (same queue, source and
    command): then a producer that exhausted its source stays finished across the change."""
    return (old.queue, old.producer.source, old.producer.command) == (
        new.queue,
        new.producer.source,
        new.producer.command,
    )


def code_changed_on_disk(children: list[Child]) -> list[str]:
    """Files of code that ``children`` loaded and that changed on disk since (see
    goodsd.codestamp); children of one role and generation load the same code, so each
    file is checked once."""
    seen: set[str] = set()
    changed: list[str] = []
    for child in children:
        todo = {p: s for p, s in child.code.items() if p not in seen}
        seen.update(todo)
        changed += codestamp.changed(todo)
    return changed


@dataclass
class Reloader:
    """The reload state of one master: each role's current generation, the config and
    generations to go back to while a reload is unproven, and what the last reload did.

    ``changed_code(children)`` names the files of code those children loaded that changed on
    disk since; tests give their own."""

    changed_code: Callable[[list[Child]], list[str]] = code_changed_on_disk
    generation: dict[Role, int] = field(default_factory=lambda: dict.fromkeys(Role, 1))
    # The config and generations to go back to while a reload's roll is not proven.
    previous: Config | None = None
    previous_generation: dict[Role, int] = field(default_factory=dict)
    # role -> the latest generation of it whose children proved themselves after a reload
    proven: dict[Role, int] = field(default_factory=dict)
    pending: bool = False  # a READY=1 is owed to systemd for a reload under way
    error: str = ""  # why the last reload failed, "" when it did not

    def __post_init__(self) -> None:
        self._seq = max(self.generation.values())

    def rolls(self, old: Config, new: Config, children: Iterable[Child]) -> dict[Role, str]:
        """The roles whose children must roll for ``new``, each with why (for the log): a
        setting they run with changed, or code they loaded changed on disk."""
        children = list(children)
        rolled: dict[Role, str] = {}
        for role in self.generation:
            if role_settings(old, role) != role_settings(new, role):
                rolled[role] = f"{role} settings changed"
                continue
            current = [
                c for c in children if c.role == role and c.generation == self.generation[role]
            ]
            changed = self.changed_code(current)
            if changed:
                shown = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
                rolled[role] = f"{role} code changed on disk ({shown})"
        return rolled

    def put_in_force(
        self,
        old: Config,
        new: Config,
        rolled: Iterable[Role],
        children: Iterable[Child],
        *,
        ready_sent: bool,
    ) -> None:
        """``new`` replaces ``old``: the rolled roles get a new generation. The first reload of
        an unproven roll keeps ``old`` to go back to; a reload on top of it keeps the same."""
        if self.previous is None:
            self.previous = old
            self.previous_generation = dict(self.generation)
        for role in rolled:
            self._seq += 1
            self.generation[role] = self._seq
        self.keep_finished(children, old, new)
        self.error = ""
        self.pending = ready_sent

    def keep_finished(self, children: Iterable[Child], old: Config, new: Config) -> None:
        """Producers whose source is exhausted stay finished across a change that keeps their
        source (e.g. new watermarks), so a finite source is not run again; a new source runs."""
        if not same_source(old, new):
            return
        for child in children:
            if child.role == Role.PRODUCER and child.state is State.FINISHED:
                child.generation = self.generation[Role.PRODUCER]

    def can_roll_back(self, child: Child) -> bool:
        """Whether ``child`` runs settings a reload brought in, which undoing it would drop,
        and that reload has not proven itself yet (see ``proven_roles``)."""
        return (
            self.previous is not None
            and child.generation == self.generation[child.role]
            and child.generation != self.previous_generation.get(child.role)
            and self.proven.get(child.role) != child.generation
        )

    def note_proofs(self, children: Iterable[Child], done: Mapping[Child, int]) -> bool:
        """Note the roles a reload changed that have proven themselves by now (``done``: items
        each child handled so far); a proof is kept once seen, for a child that handled items
        may crash later. Once every role is proven there is nothing to go back to: returns
        True then (and forgets the previous config)."""
        for role in proven_roles(children, self.generation, self.previous_generation, done):
            self.proven[role] = self.generation[role]
        if all(self.proven.get(role) == gen for role, gen in self.generation.items()):
            self.previous = None
            return True
        return False

    def roll_back(self, current: Config, children: Iterable[Child], reason: str) -> Config:
        """Undo the unproven reload (``previous`` must be set; ValueError otherwise): returns
        the config to go back to, whose generations are current again; finished producers of
        an unchanged source stay finished. The READY=1 owed (``pending``) is left to the
        caller to send."""
        if self.previous is None:
            raise ValueError("no reload to roll back")
        config, self.previous = self.previous, None
        self.generation = dict(self.previous_generation)
        self.keep_finished(children, current, config)
        self.error = reason
        return config
