#!/bin/sh
# Build the stand-in for python:3.11-slim on a machine with podman but no registry (the test
# machines; Docker users pull the real image and never need this).
# Needs root, debootstrap, podman; CONTAINERS_CONF pointing at the runc/no-ulimits containers.conf.
set -eu
ROOTFS=${ROOTFS:-/tmp/standin/rootfs}
MIRROR=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
rm -rf "$ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python3-dev,ca-certificates bookworm "$ROOTFS" "$MIRROR"
# the official image has python and pip in /usr/local/bin, Python's C headers and no PEP 668 marker
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python3"
printf '#!/bin/sh\nexec /usr/bin/python3 -m pip "$@"\n' > "$ROOTFS/usr/local/bin/pip"
chmod +x "$ROOTFS/usr/local/bin/pip"
ln -sf pip "$ROOTFS/usr/local/bin/pip3"
rm -f "$ROOTFS"/usr/lib/python3.11/EXTERNALLY-MANAGED
# this machine's HTTPS goes through an intercepting proxy: trust its CA inside builds too
cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$ROOTFS" update-ca-certificates >/dev/null
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
B=/etc/ssl/certs/ca-certificates.crt
tar -C "$ROOTFS" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "ENV PIP_CERT=$B" --change "ENV SSL_CERT_FILE=$B" --change "ENV REQUESTS_CA_BUNDLE=$B" \
  --change 'CMD ["python3"]' - docker.io/library/python:3.11-slim
podman tag docker.io/library/python:3.11-slim localhost/python:3.11-slim
