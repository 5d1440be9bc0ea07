"""The audit of the Go, Java and TypeScript clients against what README "Clients" and their own files promise,
where the clients' own suites (make test-go, test-java, test-ts) do not check it.

- clients/java/pom.xml says "Every version is pinned here", and README that Maven fetches its plugins at the versions
  pinned there: the plugins that `mvn -B -q install` (README's command) and `mvn test` run, resources, jar and
  install included, carry a version in the pom, so the build does not take whatever Maven's own release binds.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tests.serverproc import REPO_ROOT

POM = REPO_ROOT / "clients" / "java" / "pom.xml"
MAVEN = "{http://maven.apache.org/POM/4.0.0}"
# The plugins Maven's default lifecycle binds for a jar through `install` (clean too: `mvn clean install`).
LIFECYCLE_PLUGINS = (
    "maven-clean-plugin",
    "maven-resources-plugin",
    "maven-compiler-plugin",
    "maven-surefire-plugin",
    "maven-jar-plugin",
    "maven-install-plugin",
)


def pinned_plugins() -> dict[str, str]:
    """artifactId -> version of every plugin clients/java/pom.xml declares in its build."""
    build = ET.parse(POM).getroot().find(f"{MAVEN}build")
    assert build is not None, "clients/java/pom.xml has no <build>"
    pinned: dict[str, str] = {}
    for plugin in build.iter(f"{MAVEN}plugin"):
        artifact = plugin.findtext(f"{MAVEN}artifactId", "")
        pinned[artifact] = plugin.findtext(f"{MAVEN}version", "")
    return pinned


def test_every_plugin_of_the_java_clients_maven_build_is_pinned() -> None:
    pinned = pinned_plugins()
    unpinned = [name for name in LIFECYCLE_PLUGINS if not pinned.get(name)]
    assert not unpinned, f"clients/java/pom.xml leaves these plugins to Maven's defaults: {unpinned}"
