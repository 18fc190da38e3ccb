"""runner.py - runs the black-box test modules given on the command line with unittest, prints
one line per test, the stack's logs after a failure, and a final 'RESULT <passed> <failed> <skipped>'
line that tests/run.sh adds up."""

import importlib
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prism  # noqa: E402
import stack  # noqa: E402


class Result(unittest.TextTestResult):
    def _logs(self, test):
        if stack.Stack.current:
            self.stream.write("\n" + stack.Stack.current.logs() + "\n")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._logs(test)

    def addError(self, test, err):
        super().addError(test, err)
        self._logs(test)


def main():
    passed = failed = skipped = 0
    for name in sys.argv[1:]:
        module = importlib.import_module(name)
        suite = unittest.defaultTestLoader.loadTestsFromModule(module)
        print("== %s" % name, flush=True)
        start = time.time()
        runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=Result)
        r = runner.run(suite)
        bad = len(r.failures) + len(r.errors) + len(r.unexpectedSuccesses)
        # setUpModule failing counts as one failure of the module
        failed += bad
        passed += max(0, r.testsRun - bad - len(r.skipped))
        skipped += len(r.skipped)
        print("== %s: %.1fs" % (name, time.time() - start), flush=True)
    if os.environ.get("NUMATIX_TEST_PRISM"):
        bad = prism.verdict(stack.PRISM_EXCHANGES)
        print("== prism: %d requests validated against www/openapi.yaml, %d disagreements" %
              (len(stack.PRISM_EXCHANGES), len(bad)))
        for b in bad:
            print("prism: " + b)
        failed += len(bad)
    print("RESULT %d %d %d" % (passed, failed, skipped))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
