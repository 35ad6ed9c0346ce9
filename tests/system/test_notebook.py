"""docs/quickstart.ipynb runs top to bottom (nbclient, a real kernel).

Its parameters cell is pointed at the suite's embedded llama.cpp server and the service in
front of it (a reader leaves them ``None`` and the notebook starts both itself, with the
same code as ``tests/support/servers.py``); everything after it runs as stored.
"""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support import ROOT
from tests.support.servers import ServiceServer

pytestmark = pytest.mark.system

NOTEBOOK = ROOT / "docs" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.embedded
def test_notebook_runs_top_to_bottom(embedded_url: str, llama_service: ServiceServer) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    params = nb.cells[2]
    assert params.source.startswith("SERVICE_URL = None")
    params.source = f"SERVICE_URL = {llama_service.url!r}\nMODEL_SERVER_URL = {embedded_url!r}"
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "\n".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream"
    )
    assert f"service: {llama_service.url} | model server: {embedded_url}" in text
    assert '"citation_id": 1' in text  # the trailer of the RAG form
    assert "AIMessage" in text and "on_chat_model_stream" in text  # RemoteRunnable
    assert all(out.output_type != "error" for cell in nb.cells for out in cell.get("outputs", []))
