"""Role-mapping scenarios: prove a proxy's role design before production.

A scenario file (TOML, described in ``docs/scenarios.md``) declares the roles
and grants of a database (or points at an existing one), the proxy's
configuration (the keys of ``pgwire.toml`` under ``[proxy]``), and scenarios:
"startup user X on database D ends as session_user S / current_user C",
"statement Q is allowed / blocked", "after X disconnects, the next client on
that pooled connection sees role R". ``pgwire check FILE`` runs them; the
same steps are available from Python::

    from pgwire.scenarios import load_scenario_file, open_database, run_scenarios

    spec = load_scenario_file("scenarios.toml")       # ScenarioError on a mistake
    with open_database(spec) as db:                   # throwaway cluster, set up
        results = run_scenarios(spec, db, adapter="asyncio", client="pgwire")
    failed = [r for r in results if not r.passed]

``spec.proxy_file(db)`` gives the file's proxy as a
:class:`~pgwire.proxy.config_file.ProxyFile` pointed at ``db``, for tools
that want the configuration without running anything.
"""

from ._clients import CLIENTS, ClientName
from ._database import Database, open_database, quote_identifier, quote_literal
from ._load import KNOWN_KEYS, ScenarioError, load_scenario_file, parse_scenarios
from ._model import (
    ClientStep,
    ClusterOptions,
    DatabaseSpec,
    ExistingDatabase,
    Membership,
    RoleSpec,
    Scenario,
    ScenarioFile,
    SetupStep,
    StatementCheck,
)
from ._run import (
    ClientUnavailable,
    Failure,
    Result,
    check_client,
    run_scenarios,
    select_scenarios,
)

__all__ = [
    "CLIENTS",
    "KNOWN_KEYS",
    "ClientName",
    "ClientStep",
    "ClientUnavailable",
    "ClusterOptions",
    "Database",
    "DatabaseSpec",
    "ExistingDatabase",
    "Failure",
    "Membership",
    "Result",
    "RoleSpec",
    "Scenario",
    "ScenarioError",
    "ScenarioFile",
    "SetupStep",
    "StatementCheck",
    "check_client",
    "load_scenario_file",
    "open_database",
    "parse_scenarios",
    "quote_identifier",
    "quote_literal",
    "run_scenarios",
    "select_scenarios",
]
