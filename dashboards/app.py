"""The Panel app: ``create_app(RUN)`` builds one session's page; ``serve(RUN)`` runs the server.

Every session shares the process-wide store (:func:`dashboards.data_store.get_store`); the page has tabs for the
map, the run summary, topics and, for a run with preference pairs (``pair_*`` columns), the pairs. Bokeh (3.9)
renders each tab header as a ``div.bk-tab`` with ``tabindex=0`` but no ARIA role, so the page adds them in the
browser (:data:`ARIA_TABS_JS`): ``role="tablist"`` on the header row, ``role="tab"`` and ``aria-selected`` on each
tab, kept in step with the active tab. The server serves Panel's and Bokeh's own static assets
and this app, and reads nothing but the run directory and the input files the run read (for text snippets, each
checked against its receipt's SHA-256 first).

Panel also registers a ``/components/<module>/...`` route that imports whatever module its URL names (on an
unauthenticated GET) to look up a component's resources. The app loads every asset from the static routes, so
:func:`serve` shadows that route with :class:`ComponentRoute`, which answers 404 for any module not in
:data:`COMPONENT_MODULES` (none) before anything is imported.
"""

from __future__ import annotations

import logging
import os

import panel as pn
from bokeh.models import CustomJS
from panel.io.server import ComponentResourceHandler
from tornado.web import HTTPError

from dashboards.data_store import DEFAULT_MEMORY_BUDGET, get_store
from dashboards.tabs import summary_tab, topics_tab
from dashboards.views import MapExplorer, document_view, preference_tab

log = logging.getLogger(__name__)

#: Modules whose resources Panel's ``/components/<module>/<class>/<attr>/<file>`` route may serve. The page needs
#: none (its stylesheets and scripts come from ``/static/``), so every such URL is refused.
COMPONENT_MODULES: frozenset[str] = frozenset()
#: The URL pattern of Panel's component-resource route (see ``panel.io.server.get_static_routes``).
COMPONENT_ROUTE = r"/components/(.*)"


class ComponentRoute(ComponentResourceHandler):
    """Panel's component-resource handler, limited to :attr:`modules`: any other module is a 404, never imported."""

    modules: frozenset[str] = COMPONENT_MODULES

    def parse_url_path(self, path: str) -> str:
        module = path.split("/", 1)[0]
        if module not in self.modules:
            log.info("refused %s (not a component resource of this app)", self.request.path)
            raise HTTPError(404)
        return super().parse_url_path(path)


#: ARIA roles for Bokeh's tabs (see the module docstring): every ``div.bk-tab`` of the page, found through the
#: components' shadow roots, gets ``role="tab"`` and ``aria-selected`` (updated when its ``bk-active`` class
#: changes), its parent ``role="tablist"``. Run when the document is ready and when a tab is chosen (a newly shown
#: tab may hold tabs of its own); retried for a few seconds while the headers are not rendered yet.
ARIA_TABS_JS = """
function dqAriaTabs(tries) {
  const tabs = [];
  (function walk(node) {
    if (node.classList && node.classList.contains("bk-tab")) tabs.push(node);
    for (const child of node.children || []) walk(child);
    if (node.shadowRoot) for (const child of node.shadowRoot.children) walk(child);
  })(document.body);
  if (!tabs.length) {
    if (tries < 100) setTimeout(() => dqAriaTabs(tries + 1), 100);
    return;
  }
  for (const tab of tabs) {
    tab.parentElement.setAttribute("role", "tablist");
    tab.setAttribute("role", "tab");
    const sync = () => tab.setAttribute("aria-selected", String(tab.classList.contains("bk-active")));
    sync();
    if (!tab.dqAria) {
      new MutationObserver(sync).observe(tab, {attributes: true, attributeFilter: ["class"]});
      tab.dqAria = true;
    }
    const root = tab.getRootNode();  // Bokeh re-renders the headers inside it when the tabs change
    if (!root.dqAria) {
      new MutationObserver(() => dqAriaTabs(100)).observe(root, {childList: true, subtree: true});
      root.dqAria = true;
    }
  }
}
setTimeout(() => dqAriaTabs(0), 0);
"""


def create_app(run_dir: str, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> pn.viewable.Viewable:
    """The page of one browser session over ``run_dir``."""
    store = get_store(run_dir, memory_budget)
    explorer = MapExplorer(store)
    pages = [("Map", explorer.panel()), ("Run summary", summary_tab(store)), ("Topics", topics_tab(store))]
    if store.has_pairs():  # a run without pairs has nothing to show there: no tab
        pages.append(("Preference", preference_tab(store)))
    tabs = pn.Tabs(*pages, dynamic=True, sizing_mode="stretch_width")
    tabs.jscallback(active=ARIA_TABS_JS)
    if pn.state.curdoc is not None:
        pn.state.curdoc.js_on_event("document_ready", CustomJS(code=ARIA_TABS_JS))
    baselines = ""
    if store.view.is_update:  # an update, shown with the runs it was made on
        baselines = f" (this run and its baselines {', '.join(store.view.baselines)}: colour by `run`)"
    header = pn.pane.Markdown(
        f"# dq-ray map — `{os.path.basename(store.root)}`\n"
        f"{store.num_rows:,} documents{baselines} · coordinates: {store.projection}"
    )
    doc = None
    if pn.state.curdoc is not None and pn.state.session_args:
        raw = pn.state.session_args.get("doc")
        if raw:
            doc = document_view(store, raw[0].decode("utf-8", errors="replace"))
    page = pn.Column(header, *([doc] if doc is not None else []), tabs, sizing_mode="stretch_width")
    page.explorer = explorer  # for tests
    return page


def serve(
    run_dir: str,
    port: int = 5006,
    address: str = "127.0.0.1",
    show: bool = False,
    extra_origins: list[str] | None = None,
    **kwargs,
):
    """Serve the app on ``address:port`` until interrupted (127.0.0.1 by default: this machine only).

    Only pages from ``address:port`` (and localhost) may open sessions; ``extra_origins`` adds hosts. Panel's
    ``/components/`` route is limited to :data:`COMPONENT_MODULES` (see :class:`ComponentRoute`). ``kwargs`` go
    to :func:`panel.serve` (``threaded=True`` runs the server on a thread and returns it: call ``.stop()``);
    returns what :func:`panel.serve` returns.
    """
    store = get_store(run_dir)  # load once, before the first session, so errors surface here
    store.xy()
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", *(extra_origins or [])]
    log.info("serving %s on http://%s:%d", store.root, address, port)
    # tornado takes the first route that matches: this one comes before Panel's own /components/ route
    extra_patterns = [(COMPONENT_ROUTE, ComponentRoute, {}), *kwargs.pop("extra_patterns", [])]
    return pn.serve(
        {"/": lambda: create_app(run_dir)},
        port=port,
        address=address,
        websocket_origin=origins,
        show=show,
        title="dq-ray map",
        extra_patterns=extra_patterns,
        **kwargs,
    )
