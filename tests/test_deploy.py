"""
The deployment files: the Dockerfile, docker-compose.yml and the Kubernetes
manifests say what docs/deployment.md says they do.  (They cannot run here:
no Docker engine, no cluster.)
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import CHECKOUT
from .support import inCI

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

    def makeSecretsScript(self) -> str:
        """
        A copy of make-secrets.sh in a directory of its own (it writes
        ./secrets beside itself), where it can run: as root.
        """
        if os.getuid() != 0:
            raise SkipTest("make-secrets.sh runs as root (it gives files away): not here")
        directory = self.mktemp()
        os.makedirs(directory)
        script = os.path.join(directory, "make-secrets.sh")
        shutil.copy(os.path.join(DEPLOY, "compose", "make-secrets.sh"), script)
        return script

    def test_secretsReadable(self) -> None:
        """
        Compose mounts file secrets as they are on the host (mode 0600), so
        make-secrets.sh gives the platform's to the image's user (uid 10001,
        as the Dockerfile makes it), and the servers' to theirs (999).
        """
        with open(os.path.join(CHECKOUT, "Dockerfile"), encoding="utf-8") as f:
            [uid] = re.findall(r"useradd .*--uid (\d+)", f.read())
        owners = {
            "bus_url": uid,
            "db_url": uid,
            "bus_keys.json": uid,
            "account_keys.json": uid,
            "post_keys.json": uid,
            "notify_keys.json": uid,
            "postgres_password": "999",
            "rabbitmq.conf": "999",
        }
        # Every file the compose file names is made, for its reader.
        self.assertEqual(
            {os.path.basename(secret["file"]) for secret in self.compose["secrets"].values()},
            set(owners),
        )
        script = self.makeSecretsScript()
        directory = os.path.dirname(script)
        result = subprocess.run(["sh", script], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        for name, owner in owners.items():
            st = os.stat(os.path.join(directory, "secrets", name))
            self.assertEqual((st.st_uid, st.st_gid), (int(owner), int(owner)), name)
            self.assertEqual(st.st_mode & 0o777, 0o600, name)

    def test_secretsKept(self) -> None:
        """
        make-secrets.sh run again keeps every file it made (the servers keep
        their first passwords in their volumes), and a URL that is missing
        is made again with the password its server already has.
        """
        script = self.makeSecretsScript()
        secrets = os.path.join(os.path.dirname(script), "secrets")

        def run() -> dict[str, str]:
            result = subprocess.run(["sh", script], capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            contents = {}
            for name in os.listdir(secrets):
                with open(os.path.join(secrets, name), encoding="utf-8") as f:
                    contents[name] = f.read()
            return contents

        first = run()
        self.assertEqual(run(), first)
        os.remove(os.path.join(secrets, "db_url"))
        os.remove(os.path.join(secrets, "bus_url"))
        again = run()
        self.assertEqual(again, first)
        postgres = first["postgres_password"].strip()
        self.assertIn(f"txplatform:{postgres}@postgres", again["db_url"])
        self.assertIn(
            f"default_pass = {again['bus_url'].split(':')[2].split('@')[0]}\n",
            again["rabbitmq.conf"],
        )
        self.assertEqual(len(postgres), 32)

    def test_composeConfig(self) -> None:
        """
        Docker Compose accepts the file (with secrets made beside it), where
        it is installed.
        """
        # Debian's docker-compose is a Python program: nothing of this
        # environment's may leak in (trial -j sets PYTHONPATH).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        for command in (["docker-compose"], ["docker", "compose"]):
            if shutil.which(command[0]) is None:
                continue
            version = subprocess.run(
                [*command, "version"], capture_output=True, timeout=60, env=env
            )
            if version.returncode == 0:
                break
        else:
            reason = "neither docker-compose nor docker compose is installed (.ci/run installs it)"
            if inCI():
                raise AssertionError(reason)
            raise SkipTest(reason)
        directory = self.mktemp()
        shutil.copytree(os.path.join(DEPLOY, "compose"), directory)
        os.makedirs(os.path.join(directory, "secrets"))
        for secret in self.compose["secrets"].values():
            with open(os.path.join(directory, secret["file"]), "w") as f:
                f.write("placeholder\n")
        result = subprocess.run(
            [*command, "-f", os.path.join(directory, "docker-compose.yml"), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_haproxyConfig(self) -> None:
        """
        HAProxy accepts its configuration.
        """
        if shutil.which("haproxy") is None:
            reason = (
                "haproxy is not installed: its configuration check needs it (.ci/run installs it)"
            )
            if inCI():
                raise AssertionError(reason)
            raise SkipTest(reason)
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

    def test_metricsScraped(self) -> None:
        """
        Every Deployment serves its metrics and probes on port 9100
        (C{--metrics}), is ready by /readyz there, and asks Prometheus to
        scrape it.
        """
        for name, deployment in self.kind("Deployment").items():
            template = deployment["spec"]["template"]
            [container] = template["spec"]["containers"]
            args = container["args"]
            self.assertEqual(args[args.index("--metrics") + 1], "tcp:9100", name)
            self.assertIn({"name": "metrics", "containerPort": 9100}, container["ports"], name)
            self.assertEqual(
                container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"}
            )
            annotations = template["metadata"]["annotations"]
            self.assertEqual(
                (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]),
                ("true", "9100"),
                name,
            )

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

    def secretFiles(self) -> dict[str, set[str]]:
        """
        Per Deployment, the files of the secret volume its arguments name.
        """
        found = {}
        for name, deployment in self.kind("Deployment").items():
            spec = deployment["spec"]["template"]["spec"]
            [container] = spec["containers"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            files = set()
            for mount in container["volumeMounts"]:
                if "secret" not in volumes[mount["name"]]:
                    continue
                self.assertEqual(volumes[mount["name"]]["secret"]["secretName"], "txplatform")
                for argument in container["args"]:
                    path = argument.lstrip("@")
                    if path.startswith(mount["mountPath"] + "/"):
                        files.add(path[len(mount["mountPath"]) + 1 :])
            found[name] = files
        return found

    def test_secretCommand(self) -> None:
        """
        The documented command creating the secret makes every file of it
        that a Deployment reads (the URLs and each key file).
        """
        with open(os.path.join(CHECKOUT, "docs", "deployment.md"), encoding="utf-8") as f:
            text = f.read()
        # The command's lines: those ending with a backslash, and the next.
        [command] = re.findall(
            r"^kubectl -n txplatform create secret generic txplatform(?:.*\\\n)*.*$", text, re.M
        )
        words = shlex.split(command.replace("\\\n", " "))
        keys = set()
        for word in words:
            for flag in ("--from-file=", "--from-literal="):
                if word.startswith(flag):
                    value = word[len(flag) :]
                    keys.add(value.split("=", 1)[0] if "=" in value else os.path.basename(value))
        for name, files in self.secretFiles().items():
            self.assertTrue(files, name)
            self.assertLessEqual(files, keys, name)
        # and the example secret has every key a Deployment reads
        [secret] = documents(os.path.join(DEPLOY, "kubernetes", "secret.example.yaml"))
        example = set(secret["stringData"]) | {
            "account_keys.json",
            "post_keys.json",
            "notify_keys.json",
        }
        for files in self.secretFiles().values():
            self.assertLessEqual(files, example)

    def test_secretPathsMounted(self) -> None:
        """
        Every file a value of the example secret names (a CA for the broker)
        is one the pods have: a file of the secret itself, which every
        Deployment mounts.
        """
        [secret] = documents(os.path.join(DEPLOY, "kubernetes", "secret.example.yaml"))
        paths = [
            path
            for value in secret["stringData"].values()
            for path in re.findall(r"=(/[^&\s\"']+)", value)
        ]
        self.assertTrue(paths)
        for name, deployment in self.kind("Deployment").items():
            spec = deployment["spec"]["template"]["spec"]
            [container] = spec["containers"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            for path in paths:
                [mount] = [
                    m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")
                ]
                if "secret" in volumes[mount["name"]]:
                    self.assertIn(path[len(mount["mountPath"]) + 1 :], secret["stringData"], name)

    def test_kustomize(self) -> None:
        """
        kubectl builds the kustomization, and kubernetes-validate accepts
        what it builds against the Kubernetes 1.30 schemas, where they are
        installed.
        """
        if shutil.which("kubectl") is None:
            raise SkipTest("kubectl is not installed")
        built = subprocess.run(
            ["kubectl", "kustomize", os.path.join(DEPLOY, "kubernetes")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(built.returncode, 0, built.stderr)
        validate = shutil.which("kubernetes-validate") or shutil.which(
            "kubernetes-validate", path=os.path.dirname(sys.executable)
        )
        if validate is None:
            reason = (
                "kubernetes-validate is not installed (the build was checked; .ci/run installs it)"
            )
            if inCI():
                raise AssertionError(reason)
            raise SkipTest(reason)
        manifests = self.mktemp()
        with open(manifests, "w") as f:
            f.write(built.stdout)
        for path in [manifests, os.path.join(DEPLOY, "kubernetes", "secret.example.yaml")]:
            result = subprocess.run(
                [validate, "-k", "1.30.0", "--strict", path],
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

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


class RabbitClusterScriptTests(SynchronousTestCase):
    """
    deploy/rabbitmq-cluster.sh as docs/deployment.md shows it (the tests of
    tests/amqp/test_failover.py run it: it starts a cluster of their own).
    """

    def test_documentedCommands(self) -> None:
        """
        The documented block starts the cluster, asks a node of it for the
        cluster's status, and stops it, in one directory; the script takes
        those commands (and restart) and parses as bash.
        """
        with open(os.path.join(CHECKOUT, "docs", "deployment.md"), encoding="utf-8") as f:
            text = f.read()
        [block] = [
            b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "rabbitmq-cluster.sh" in b
        ]
        commands = [shlex.split(line, comments=True) for line in block.strip().splitlines()]
        directory = "/tmp/txp-cluster"
        self.assertEqual(
            commands,
            [
                ["sudo", "deploy/rabbitmq-cluster.sh", "start", directory],
                ["sudo", "rabbitmqctl", "-n", "txp-a@localhost", "cluster_status"],
                ["sudo", "deploy/rabbitmq-cluster.sh", "stop", directory],
            ],
        )
        self.assertIn(f"`{directory}/urls` holds the `--bus` value", text)
        self.assertIn(f"`sudo deploy/rabbitmq-cluster.sh\nrestart {directory} txp-b`", text)
        script = os.path.join(DEPLOY, "rabbitmq-cluster.sh")
        self.assertTrue(os.access(script, os.X_OK))
        subprocess.run(["bash", "-n", script], check=True, timeout=30)
        usage = subprocess.run([script], capture_output=True, text=True, timeout=30)
        self.assertEqual(usage.returncode, 2)
        self.assertIn("start|stop DIRECTORY", usage.stderr)
        self.assertIn("restart DIRECTORY NODE", usage.stderr)
        with open(script, encoding="utf-8") as f:
            source = f.read()
        self.assertIn('NODES=("$PREFIX-a" "$PREFIX-b" "$PREFIX-c")', source)
        self.assertIn("PREFIX=${TXP_CLUSTER_PREFIX:-txp}", source)
        self.assertIn("BASE_PORT=${TXP_CLUSTER_PORT_BASE:-5680}", source)
