"""Build hook: ship ``tazcom_env.pth`` beside the packages.

Why: ``supervisord -c supervisord.conf`` must work with no ``TAZCOM_HOME`` set
and with a ``TAZCOM_HOME`` that does not exist yet, but supervisord's config
language cannot default an environment variable nor create a directory. The
.pth line runs at interpreter start-up and, only inside supervisord and
supervisorctl, calls :func:`tazcom.supervisor_env.prepare` (README, "Node home").
Everything else lives in pyproject.toml.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "tazcom_env.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            # Editable wheels are assembled from install_lib, not build_lib.
            target_dir = self.get_finalized_command("install").install_lib
        else:
            target_dir = self.build_lib
        self.copy_file(PTH, os.path.join(target_dir, PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})
