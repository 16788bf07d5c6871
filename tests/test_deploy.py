"""
The deployment files: the Dockerfile, docker-compose.yml and the Kubernetes
manifests say what docs/deployment.md says they do.  (They cannot run here:
no Docker engine, no cluster.)
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import CHECKOUT

DEPLOY = os.path.join(CHECKOUT, "deploy")


def documents(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


class ComposeTests(SynchronousTestCase):
    def setUp(self) -> None:
        [self.compose] = documents(os.path.join(DEPLOY, "compose", "docker-compose.yml"))
        self.services = self.compose["services"]

    def test_tiers(self) -> None:
        """
        RabbitMQ, PostgreSQL, a load balancer, and two replicas of the
        gateway and of each service, all with health checks.
        """
        self.assertEqual(
            set(self.services),
            {
                "rabbitmq",
                "postgres",
                "loadbalancer",
                "gateway",
                "account",
                "post",
                "notify",
                "parser",
            },
        )
        for name in ["gateway", "account", "post", "notify", "parser"]:
            service = self.services[name]
            self.assertEqual(service["deploy"]["replicas"], 2, name)
            self.assertIn("healthcheck", service, name)
            self.assertEqual(service["command"][0], name)
        for name in ["rabbitmq", "postgres"]:
            self.assertIn("healthcheck", self.services[name])

    def test_secretsFromFiles(self) -> None:
        """
        Broker and database URLs come from secret files, never inline.
        """
        for name in ["account", "post", "notify", "gateway", "parser"]:
            command = self.services[name]["command"]
            self.assertIn("@/run/secrets/bus_url", command)
            self.assertNotIn("amqp://", " ".join(command))
        for secret in self.compose["secrets"].values():
            self.assertTrue(secret["file"].startswith("./secrets/"))

    def test_haproxyConfig(self) -> None:
        """
        HAProxy accepts its configuration.
        """
        if shutil.which("haproxy") is None:
            raise SkipTest("haproxy is not installed: its configuration check needs it")
        result = subprocess.run(
            ["haproxy", "-c", "-f", os.path.join(DEPLOY, "compose", "haproxy.cfg")],
            capture_output=True,
            text=True,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class KubernetesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.resources = []
        for path in sorted(glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml"))):
            if os.path.basename(path) != "kustomization.yaml":
                self.resources += documents(path)

    def kind(self, kind: str) -> dict[str, dict]:
        return {r["metadata"]["name"]: r for r in self.resources if r["kind"] == kind}

    def test_deployments(self) -> None:
        """
        The gateway and each service run as non-root Deployments with
        probes, resource limits and a grace period for draining.
        """
        deployments = self.kind("Deployment")
        self.assertEqual(set(deployments), {"gateway", "account", "post", "notify", "parser"})
        for name, deployment in deployments.items():
            spec = deployment["spec"]["template"]["spec"]
            [container] = spec["containers"]
            self.assertEqual(container["args"][0], name)
            self.assertTrue(spec["securityContext"]["runAsNonRoot"])
            self.assertGreaterEqual(spec["terminationGracePeriodSeconds"], 20)
            for key in ["readinessProbe", "livenessProbe", "resources"]:
                self.assertIn(key, container, name)

    def test_autoscalers(self) -> None:
        """
        Every Deployment has a HorizontalPodAutoscaler aimed at it.
        """
        targets = {
            h["spec"]["scaleTargetRef"]["name"]
            for h in self.kind("HorizontalPodAutoscaler").values()
        }
        self.assertEqual(targets, set(self.kind("Deployment")))
        for hpa in self.kind("HorizontalPodAutoscaler").values():
            self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2)

    def test_kustomization(self) -> None:
        """
        The kustomization lists every manifest but the example secret.
        """
        [kustomization] = documents(os.path.join(DEPLOY, "kubernetes", "kustomization.yaml"))
        files = {
            os.path.basename(p) for p in glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml"))
        }
        self.assertEqual(
            set(kustomization["resources"]), files - {"kustomization.yaml", "secret.example.yaml"}
        )


class DockerfileTests(SynchronousTestCase):
    def test_oneImage(self) -> None:
        """
        One image; twistd is the entry point, so the command picks the
        service; it runs as a non-root user.
        """
        with open(os.path.join(CHECKOUT, "Dockerfile"), encoding="utf-8") as f:
            text = f.read()
        self.assertIn('ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--logfile=-"]', text)
        self.assertIn("USER txplatform", text)
        for directory in ["txplatform", "services", "gateway", "plugins", "twisted"]:
            self.assertIn(f"COPY {directory} {directory}", text)
