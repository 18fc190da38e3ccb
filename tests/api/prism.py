"""prism.py - the verdict on the traffic that went through Prism's validation proxy (stack.Prism):
where the service and www/openapi.yaml disagree, in either direction.

- An answer that breaks the document is always a disagreement.
- A request the document refuses that the service accepted (2xx or 3xx) is one: the document is
  stricter than the service. Refused by both (a 4xx for a request Prism also flags) is the
  suites doing their job: hostile input, wrong tokens, unknown routes.
- A request the document allows that the service refused as invalid (400) is one too: the
  document is looser than the service — unless the rule is one a schema cannot state (below).

Prism's own limits, which the suites work around rather than hide:
- It parses bodies itself, so a body that is not JSON (or not UTF-8) never reaches a validator
  the way it reaches the service: the hostile suite sends those straight to nginx
  (Stack.direct_port), as it does raw bytes on the wire and HEAD, which Prism answers 500 for.
- It takes an empty query value (`after=`) as no value, which the service refuses (400), as
  the document says it should (an integer): not counted.
- It validates one exchange at a time and logs without a request id: under concurrency a
  violation is put with the last request received; only the direction of the answer (2xx or
  not) depends on that, and the concurrency suites send valid requests.
"""

import re

# 400s that no schema of the document can state: they depend on the stored state or on a
# relation between fields. (request, why)
SEMANTIC_400 = [
    (r"^post /api/subscriptions/:id/change-plan$", "planId is the subscription's plan already; or a payment "
     "method is needed because the new plan costs more for the days left"),
    (r"^patch /api/plans/:id$", "a change that changes nothing, or a capacity below what is sold, is refused "
     "against the stored plan"),
    (r"^post /api/checkout-sessions(/:id/complete)?$", "quantity above the plan's max_per_order (a stored value)"),
    (r"^post /api/subscriptions/purchase$", "quantity above the plan's max_per_order (a stored value)"),
    (r"^post /api/plans/:id/waitlist$", "quantity above the plan's max_per_order (a stored value)"),
    (r"^get /api/(audit-logs|customers/:id/subscriptions|plans/:id/waitlist|webhook-endpoints/:id/deliveries)$",
     "a cursor that is not one this service gave out"),
]


def shape(request):
    """A request's route: ids as :id, the query left out."""
    return re.sub(r"/[0-9a-f]{24}(?=/|$)", "/:id", request.split("?")[0])


def verdict(exchanges):
    """The disagreements, one line each, the same one counted once."""
    bad = {}
    for x in exchanges:
        route, status = shape(x["request"]), x["status"]
        # only the API is the document's (the pages are nginx's files); a path with an encoded
        # dot segment is routed by nginx after it is normalised, by Prism before
        if not route.split(" ", 1)[1].startswith("/api/") or re.search(r"%2e|%2f|/\.\.", route, re.I):
            continue
        req = [v for v in x["violations"] if v.startswith("request")]
        for v in x["violations"]:
            if v.startswith("response"):
                bad.setdefault("%s -> %s: the answer breaks the document: %s" % (route, status, re.sub(
                    r"\.\d+\.", ".N.", v)), 0)
        if req and status is not None and status < 400:
            for v in req:
                bad.setdefault("%s -> %s: the service accepts what the document refuses: %s" % (route, status, v), 0)
        empty_value = re.search(r"[?&][A-Za-z]+=(&|$)", x.get("url", ""))
        if not req and status == 400 and not empty_value and not any(re.search(p, route) for p, _ in SEMANTIC_400):
            bad.setdefault("%s -> 400: the service refuses what the document allows (%s)" % (route, x["request"]), 0)
    return sorted(bad)
