"""Which requests go through a proxy: the proxy variables as the environment gives them
(upper and lower case), NO_PROXY's forms, and LLM_UPSTREAM_TRUST_ENV=false."""

from __future__ import annotations

import base64

import pytest

from llm_service.settings import Settings, SettingsError
from llm_service.upstream.auth import url_credentials
from llm_service.upstream.proxy import Proxies, parse_proxy

PROXY_VARIABLES = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "LLM_UPSTREAM_TRUST_ENV"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize("upper", [True, False])
def test_proxy_variables_are_read_in_either_case(
    monkeypatch: pytest.MonkeyPatch, upper: bool
) -> None:
    def name(n: str) -> str:
        return n if upper else n.lower()

    monkeypatch.setenv(name("HTTP_PROXY"), "http://proxy.corp:3128")
    monkeypatch.setenv(name("HTTPS_PROXY"), "proxy.corp:3129")  # no scheme: http://, as curl
    monkeypatch.setenv(name("NO_PROXY"), ".internal,10.0.0.0/8")
    settings = Settings.load(None)
    assert settings.http_proxy == "http://proxy.corp:3128"
    assert settings.https_proxy == "http://proxy.corp:3129"
    proxies = Proxies.from_settings(settings)
    assert proxies.for_url("http://vllm:8000/v1/models") == "http://proxy.corp:3128"
    assert proxies.for_url("https://vllm.example.com/v1") == "http://proxy.corp:3129"
    assert proxies.for_url("http://gpu.internal:8000") is None
    assert proxies.for_url("http://10.1.2.3:8000") is None

    monkeypatch.setenv("LLM_UPSTREAM_TRUST_ENV", "false")
    assert not Proxies.from_settings(Settings.load(None))
    assert Proxies.from_settings(Settings.load(None)).for_url("http://vllm:8000") is None


@pytest.mark.parametrize(
    ("no_proxy", "url", "direct"),
    [
        ("example.com", "http://example.com/v1", True),
        ("example.com", "http://api.example.com/v1", True),  # a name covers its subdomains
        (".example.com", "http://example.com/v1", True),  # a leading dot changes nothing
        ("EXAMPLE.com", "https://Api.Example.COM/v1", True),
        ("example.com", "http://notexample.com/v1", False),
        ("example.com:8000", "http://example.com:8000/v1", True),
        ("example.com:8000", "http://example.com:8001/v1", False),
        ("example.com:443", "https://example.com/v1", True),  # the scheme's default port
        ("10.1.2.3", "http://10.1.2.3:8000", True),
        ("0.0.1", "http://127.0.0.1:8000", False),  # an address is no suffix of another
        ("10.0.0.0/8", "http://10.200.0.9", True),
        ("10.0.0.0/8", "http://11.0.0.1", False),
        ("10.0.0.0/8", "http://ten.example", False),
        ("::1", "http://[::1]:8000", True),
        ("[::1]:8000", "http://[::1]:8000", True),
        ("fd00::/8", "http://[fd12::5]:8000", True),
        ("*", "https://anything.example", True),
        (" a.example , b.example ,", "http://b.example", True),
        ("", "http://example.com", False),
    ],
)
def test_no_proxy_forms(no_proxy: str, url: str, direct: bool) -> None:
    proxies = Proxies("http://proxy:3128", "http://proxy:3128", no_proxy)
    assert (proxies.for_url(url) is None) is direct


def test_each_scheme_has_its_own_proxy() -> None:
    only_http = Proxies(http="http://proxy:3128")
    assert only_http.for_url("http://vllm") == "http://proxy:3128"
    assert only_http.for_url("https://vllm") is None
    only_https = Proxies(https="http://proxy:3128")
    assert only_https.for_url("http://vllm") is None


def test_proxy_credentials_become_a_header_and_leave_the_url() -> None:
    proxy = parse_proxy("http://us%40er:p%3Ass@proxy.corp:3128")
    assert proxy.url == "http://proxy.corp:3128"
    assert (proxy.host, proxy.port) == ("proxy.corp", 3128)
    assert proxy.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert parse_proxy("http://proxy.corp").port == 80
    assert parse_proxy("http://proxy.corp").authorization is None


def test_url_credentials_become_a_basic_header() -> None:
    bare, header = url_credentials("https://bob:s%2Fcret@vllm:8443/v1/chat/completions?x=1")
    assert bare == "https://vllm:8443/v1/chat/completions?x=1"
    assert header == "Basic " + base64.b64encode(b"bob:s/cret").decode()
    assert url_credentials("http://vllm:8000/v1") == ("http://vllm:8000/v1", None)


def test_bad_proxies_stop_startup_unless_ignored() -> None:
    with pytest.raises(SettingsError, match="HTTPS_PROXY: 'socks5://\\*\\*\\*@proxy:1080'") as bad:
        Settings.load(None, https_proxy="socks5://user:hunter22@proxy:1080")
    assert "hunter22" not in str(bad.value)
    with pytest.raises(SettingsError, match=r"HTTP_PROXY: .* invalid port"):
        Settings.load(None, http_proxy="http://proxy:99999")
    ignored = Settings.load(None, https_proxy="socks5://proxy:1080", upstream_trust_env=False)
    assert not Proxies.from_settings(ignored)
