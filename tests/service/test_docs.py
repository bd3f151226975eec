"""The API docs are served by the app itself (no CDN, so they work offline) and counted under their route."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.core.settings import Settings


def test_docs_pages_and_their_assets_come_from_the_service(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(model_dir=tmp_path / "models"))) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200
            assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", html.text)
            assert assets, html.text
            for asset in assets:
                assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
                assert client.get(asset).status_code == 200, asset
        counted = [
            line for line in client.get("/metrics").text.splitlines() if line.startswith("perfcost_requests")
        ]
        assert any('route="/docs"' in line for line in counted)
        assert not any('route="unmatched"' in line for line in counted), counted
