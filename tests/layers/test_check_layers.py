#!/usr/bin/env python3
"""Tests of check_layers.py on small fixture trees in a temporary folder: each
test writes a tree with one dependency and asserts what the checker says."""

import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_layers  # noqa: E402


def make_tree(root: Path, files: dict) -> None:
    base = {
        "src/core/row/band.hpp": "#pragma once\n#include <cmath>\n",
        "src/core/topk.cpp": '#include "sparsetopk/topk.hpp"\n#include "band.hpp"\n',
        "include/sparsetopk/topk.hpp": "#pragma once\n#include <sparsetopk/row_state.hpp>\n",
        "include/sparsetopk/row_state.hpp": "#pragma once\n",
        "include/sparsetopk/torch.hpp": "#pragma once\n#include <sparsetopk/topk.hpp>\n#include <torch/types.h>\n",
        "src/cuda/topk_kernels.hpp": "#pragma once\n#include <cuda_runtime_api.h>\n#include <sparsetopk/row_state.hpp>\n",
        "src/cuda/topk_kernels.cu": '#include "topk_kernels.hpp"\n#include "band.hpp"\n#include <cub/block/block_scan.cuh>\n',
        "src/torch/checks.hpp": "#pragma once\n#include <ATen/core/Tensor.h>\n",
        "src/torch/ops.cpp": '#include "checks.hpp"\n#include <sparsetopk/torch.hpp>\n',
        "src/torch/cuda/cuda_kernel.cpp": '#include "checks.hpp"\n#include "topk_kernels.hpp"\n',
        "src/jax/ffi_handlers.cpp": '#include <sparsetopk/topk.hpp>\n#include "xla/ffi/api/ffi.h"\n',
        "src/jax/cuda_handlers.cpp": '#include "topk_kernels.hpp"\n#include "xla/ffi/api/ffi.h"\n',
        "src/cli/parse.hpp": "#pragma once\n#include <sparsetopk/topk.hpp>\n",
        "tests/support/test_support.hpp": "#pragma once\n",
        "tests/core/test_band.cpp": '#include "band.hpp"\n#include "test_support.hpp"\n#include <gtest/gtest.h>\n',
        "fuzz/fuzz_cli_parser.cpp": '#include "parse.hpp"\n',
        "apps/app.cpp": "#include <sparsetopk/torch.hpp>\n#include <torch/torch.h>\n",
        "python/sparsetopk/__init__.py": "import sys\nif 'torch' in sys.modules:\n    from . import nn\n",
        "python/sparsetopk/_paths.py": "import os\n",
        "python/sparsetopk/_library.py": "from . import _paths\n\ndef load():\n    import torch\n",
        "python/sparsetopk/nn.py": "import torch\nfrom ._library import load\n",
        "python/sparsetopk/jax/__init__.py": "from . import _ffi\n",
        "python/sparsetopk/jax/_ffi.py": "import jax\nfrom .._paths import candidate_paths\n",
    }
    base.update(files)
    for name, text in base.items():
        if text is None:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


class CheckLayers(unittest.TestCase):
    def violations(self, files: dict) -> list:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            make_tree(root, files)
            return [str(v) for v in check_layers.check(root)]

    def assert_one(self, files: dict, *fragments: str) -> None:
        found = self.violations(files)
        self.assertEqual(len(found), 1, found)
        for fragment in fragments:
            self.assertIn(fragment, found[0])

    def test_the_fixture_tree_is_clean(self):
        self.assertEqual(self.violations({}), [])

    def test_jax_cpu_including_a_cuda_header_is_reported_with_both_files(self):
        self.assert_one({"src/jax/ffi_handlers.cpp": '#include "topk_kernels.hpp"\n'},
                        "src/jax/ffi_handlers.cpp:1:",
                        "src/jax/ffi_handlers.cpp includes src/cuda/topk_kernels.hpp: jax may not depend on cuda")

    def test_jax_cpu_including_the_cuda_runtime_is_reported(self):
        self.assert_one({"src/jax/ffi_checks.hpp": "#pragma once\n#include <cuda_runtime_api.h>\n"},
                        "jax may not depend on cuda")

    def test_torch_and_jax_are_siblings(self):
        self.assert_one({"src/jax/ffi_handlers.cpp": "#include <sparsetopk/torch.hpp>\n"},
                        "includes include/sparsetopk/torch.hpp: jax may not depend on torch")
        self.assert_one({"src/torch/ops.cpp": '#include "xla/ffi/api/ffi.h"\n'}, "torch may not depend on jax")

    def test_the_core_may_include_nothing_outside_the_core(self):
        self.assert_one({"src/core/row/band.hpp": "#pragma once\n#include <torch/types.h>\n"},
                        'src/core/row/band.hpp includes <torch/types.h> (torch): row may not depend on torch')
        self.assert_one({"include/sparsetopk/row_state.hpp": '#pragma once\n#include "../../src/cuda/topk_kernels.hpp"\n'},
                        "include/sparsetopk/row_state.hpp includes src/cuda/topk_kernels.hpp: api may not depend on cuda")
        self.assert_one({"src/core/topk.cpp": '#include "parse.hpp"\n'}, "core may not depend on cli")

    def test_the_row_functions_reach_nothing_of_the_cpu_loops(self):
        self.assert_one({"src/core/parallel.hpp": "#pragma once\n",
                         "src/core/row/band.hpp": '#pragma once\n#include "parallel.hpp"\n'},
                        "src/core/row/band.hpp includes src/core/parallel.hpp: row may not depend on core")
        self.assertEqual(self.violations({"src/core/row/pav.hpp": '#pragma once\n#include "band.hpp"\n'}), [])

    def test_the_cuda_layer_sees_row_functions_not_core_internals(self):
        self.assert_one({"src/core/workspace.hpp": "#pragma once\n",
                         "src/cuda/topk_kernels.cu": '#include "band.hpp"\n#include "workspace.hpp"\n'},
                        "src/cuda/topk_kernels.cu includes src/core/workspace.hpp: cuda may not depend on core")

    def test_the_cuda_layer_may_not_include_an_adapter(self):
        self.assert_one({"src/cuda/topk_kernels.cu": '#include "checks.hpp"\n'},
                        "src/cuda/topk_kernels.cu includes src/torch/checks.hpp: cuda may not depend on torch")

    def test_a_relative_include_within_the_allowed_layers_is_still_reported(self):
        self.assert_one({"src/torch/cuda/cuda_kernel.cpp": '#include "../../cuda/topk_kernels.hpp"\n'},
                        'includes "../../cuda/topk_kernels.hpp": include by name')

    def test_tests_sit_at_the_layer_they_test(self):
        self.assert_one({"tests/core/test_band.cpp": '#include "topk_kernels.hpp"\n'},
                        "tests/core/test_band.cpp includes src/cuda/topk_kernels.hpp: core may not depend on cuda")
        self.assertEqual(self.violations({"tests/cuda/test_kernels.cpp": '#include "topk_kernels.hpp"\n'}), [])

    def test_library_code_may_not_include_the_tests(self):
        self.assert_one({"src/core/topk.cpp": '#include "test_support.hpp"\n'}, "may not depend on the tests")

    def test_python_torch_part_may_not_import_jax(self):
        self.assert_one({"python/sparsetopk/nn.py": "import torch\nfrom .jax import _ffi\n"},
                        "python/sparsetopk/nn.py:2:", "imports sparsetopk.jax (python/sparsetopk/jax/__init__.py): "
                        "torch may not depend on jax")
        self.assert_one({"python/sparsetopk/_library.py": "def f():\n    import jax.numpy\n"},
                        "imports jax.numpy: torch may not depend on jax")

    def test_python_jax_part_may_not_import_torch(self):
        self.assert_one({"python/sparsetopk/jax/_ffi.py": "import jax\nfrom .. import nn\n"},
                        "python/sparsetopk/jax/_ffi.py imports sparsetopk.nn (python/sparsetopk/nn.py): "
                        "jax may not depend on torch")
        self.assert_one({"python/sparsetopk/jax/_ffi.py": "import torch.utils\n"}, "jax may not depend on torch")

    def test_the_common_python_module_imports_no_framework(self):
        self.assert_one({"python/sparsetopk/_paths.py": "import torch\n"}, "core may not depend on torch")

    def test_the_top_layer_may_use_everything(self):
        self.assertEqual(self.violations({"bench/b.cpp": '#include "band.hpp"\n#include "topk_kernels.hpp"\n'
                                                         '#include <sparsetopk/torch.hpp>\n#include "xla/ffi/api/ffi.h"\n'}),
                         [])

    def test_main_exits_1_on_a_violation_and_0_on_a_clean_tree(self):
        for files, status in (({}, 0), ({"src/cuda/topk_kernels.cu": '#include "checks.hpp"\n'}, 1)):
            with tempfile.TemporaryDirectory() as folder:
                make_tree(Path(folder), files)
                self.assertEqual(check_layers.main(["check_layers.py", folder]), status)


if __name__ == "__main__":
    unittest.main()
