# Stand-in for the get-pip.py bootstrap script that ansible-test downloads into
# ~/.ansible/test/cache/get_pip_<version>.py before it fills a sanity-test virtualenv.
# tests/sanity/run puts this file there, so that no download is needed, together with a
# pip configuration written beside it (get_pip_<version>.pip.conf) by the mode below.
#
#   python3 tests/sanity/get_pip.py --write-pip-conf PATH
#       Writes the pip settings of the calling environment (PIP_* variables such as PIP_CERT,
#       PIP_INDEX_URL, PIP_FIND_LINKS, the CA bundle of REQUESTS_CA_BUNDLE / SSL_CERT_FILE, an
#       https proxy, and the file named by PIP_CONFIG_FILE) to PATH as a pip.conf. Nothing is
#       written when there is nothing to hand on.
#
#   python get_pip_<version>.py [pip install options] pip==<version> [--no-setuptools] [--no-wheel]
#       What ansible-test runs, with the virtualenv's python: copies the pip.conf beside this
#       file into the virtualenv (<venv>/pip.conf, which every pip run in that virtualenv reads),
#       installs the pip bundled with Python (ensurepip), then pip-installs the pinned packages.
#
# The pip.conf is needed because ansible-test runs pip with a filtered environment (PATH, HOME,
# LC_ALL): settings that live in environment variables never reach pip otherwise. Settings in
# /etc/pip.conf, /etc/xdg/pip/pip.conf and ~/.config/pip/pip.conf are read by pip in any case.
from __future__ import annotations

import configparser
import io
import os
import shutil
import subprocess
import sys

# Options of pip that decide where packages come from and how they are fetched.
FORWARDED = (
    'cert',
    'client-cert',
    'constraint',
    'default-timeout',
    'disable-pip-version-check',
    'extra-index-url',
    'find-links',
    'index-url',
    'no-index',
    'proxy',
    'retries',
    'timeout',
    'trusted-host',
)

# Where other tools look for a CA bundle; used for pip's cert when PIP_CERT is not set.
CA_BUNDLE_VARIABLES = ('REQUESTS_CA_BUNDLE', 'SSL_CERT_FILE', 'CURL_CA_BUNDLE')

PROXY_VARIABLES = ('https_proxy', 'HTTPS_PROXY')


def pip_settings(environ: dict[str, str]) -> configparser.ConfigParser:
    """Return the pip configuration that the given environment stands for."""
    config = configparser.ConfigParser(interpolation=None)
    config_file = environ.get('PIP_CONFIG_FILE')

    if config_file and config_file != os.devnull and os.path.isfile(config_file):
        config.read(config_file)

    if not config.has_section('global'):
        config.add_section('global')

    section = config['global']

    for option in FORWARDED:
        value = environ.get('PIP_' + option.upper().replace('-', '_'))

        if value:
            section[option] = value

    if 'cert' not in section:
        for name in CA_BUNDLE_VARIABLES:
            if environ.get(name) and os.path.isfile(environ[name]):
                section['cert'] = environ[name]
                break

    if 'proxy' not in section:
        for name in PROXY_VARIABLES:
            if environ.get(name):
                section['proxy'] = environ[name]
                break

    return config


def write_pip_conf(path: str) -> None:
    """Write the pip settings of this process's environment to path, or remove path if there are none."""
    config = pip_settings(dict(os.environ))

    if not any(config[name] for name in config.sections()):
        if os.path.exists(path):
            os.remove(path)

        return

    text = io.StringIO()
    config.write(text)

    with open(path, 'w', encoding='utf-8') as conf:
        conf.write(text.getvalue())


def bootstrap(arguments: list[str]) -> int:
    """Install pip into the running virtualenv, then the packages named in arguments."""
    pip_conf = os.path.splitext(os.path.abspath(__file__))[0] + '.pip.conf'

    if os.path.isfile(pip_conf):
        shutil.copyfile(pip_conf, os.path.join(sys.prefix, 'pip.conf'))

    status = subprocess.call([sys.executable, '-m', 'ensurepip', '--upgrade', '--default-pip'], stdout=subprocess.DEVNULL)

    if status:
        return status

    # The real get-pip.py leaves out setuptools and wheel on request; pip install never adds them.
    options = [argument for argument in arguments if argument not in ('--no-setuptools', '--no-wheel')]

    return subprocess.call([sys.executable, '-m', 'pip', 'install'] + options)


def main() -> None:
    """Main program entry point."""
    if sys.argv[1:2] == ['--write-pip-conf'] and len(sys.argv) == 3:
        write_pip_conf(sys.argv[2])
        return

    sys.exit(bootstrap(sys.argv[1:]))


if __name__ == '__main__':
    main()
