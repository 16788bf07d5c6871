# One image for every process; the command chooses which:
#   docker run IMAGE txplatform          (all in one, embedded)
#   docker run IMAGE gateway --bus @/run/secrets/bus_url --listen tcp:8080
#   docker run IMAGE account --bus @/run/secrets/bus_url --db @/run/secrets/db_url
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY txplatform txplatform
COPY services services
COPY gateway gateway
COPY plugins plugins
COPY twisted twisted
COPY src src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv txplatform \
    && mkdir -p /srv/var && chown txplatform /srv/var
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    # Build twistd's plugin cache now: site-packages is not writable later.
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
USER txplatform
WORKDIR /srv
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
# Logs to stdout; no pidfile (one process per container); SIGTERM drains.
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--logfile=-"]
CMD ["txplatform", "--listen", "tcp:8080", "--data-dir", "/srv/var"]
