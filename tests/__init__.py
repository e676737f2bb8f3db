"""edgerep's tests, in folders named after the package's rooms (tests/fuse tests edgerep/fuse, ...).

Every folder is a package (it has an __init__.py), so pytest imports a test module by its dotted name
(tests.fuse.test_fuse) with the repository root on sys.path, never a test folder itself: a folder on sys.path
would pass its subfolders off as top-level packages (tests/backends/tensorrt as `import tensorrt` on a machine
without TensorRT). Shared helpers are imported the same way: `from tests.paths import REPO`.
"""
