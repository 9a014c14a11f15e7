"""report.json → report.md: tables computed here, every sentence from ``report_template.md``.

Reads the reports of every version of ``lm compare``: those written before the model registry hold
two runs, ``backprop`` and ``noprop`` (DT, one layer per block), and no ``order``, ``model`` or
per-run ``matching`` keys; they render as they did then.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from .matching import within
from .registry import RunSpec, architecture, spec_of

TEMPLATE = Path(__file__).with_name("report_template.md")
#: names in the sentence on output vectors (the first version's words for its two runs)
COSINE_NAMES = {"backprop": "back-prop", "noprop": "NoProp"}


@cache
def sections() -> dict[str, Template]:
    """The template file's sections by name (its format: the file's first lines)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in TEMPLATE.read_text(encoding="utf-8").split("\n"):
        if line.startswith("%% "):
            current = out.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: Template("\n".join(lines).rstrip("\n")) for name, lines in out.items()}


def fill(section: str, **values: Any) -> str:
    return sections()[section].substitute(values)


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


# ------------------------------------------------------------------------------------ the runs
def order(r: dict[str, Any]) -> list[str]:
    return r.get("order") or [n for n in ("backprop", "noprop") if n in r["runs"]]


def specs(r: dict[str, Any]) -> dict[str, RunSpec]:
    return {n: spec_of(n, r["plan"]["runs"][n]) for n in order(r)}


def matching(r: dict[str, Any], name: str) -> dict[str, Any] | None:
    run = r["plan"]["runs"][name]
    if "matching" in run:
        return run["matching"]
    return r["plan"].get("matching") if name == "noprop" else None


def chain_run(r: dict[str, Any]) -> str | None:
    """The NoProp-DT run the discussion reads: ``noprop`` (one layer per block), else the DT run
    with the fewest layers per block that has a trajectory."""
    chains = [n for n in order(r) if "alpha_bar" in (r["trajectory"].get(n) or [{}])[0]]
    if not chains:
        return None
    return "noprop" if "noprop" in chains else min(chains, key=lambda n: specs(r)[n].k)


def depth_sweep(r: dict[str, Any]) -> dict[str, Any] | None:
    """The depth sweep's numbers: k values, per block-wise model {k: run}, and the one-network
    runs; None unless some block-wise model ran at more than one k."""
    sp = specs(r)
    methods: dict[str, dict[int, str]] = {}
    for name, s in sp.items():
        if s.entry.blockwise:
            methods.setdefault(s.entry.name, {})[s.k] = name
    if not any(len(v) > 1 for v in methods.values()):
        return None
    ks = sorted({k for v in methods.values() for k in v})
    others = [n for n, s in sp.items() if not s.entry.blockwise]
    return {"ks": ks, "methods": methods, "others": others}


def _bits(test: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(raw, calibrated) bits per byte of the reported read-out: the fair one chosen on validation
    when the report has it (issue 22), else the legacy read-out (reports written before it)."""
    if not test:
        return None, None
    t = test.get("fair", test)
    return t["bits_per_byte"], t.get("bits_per_byte_calibrated")


def _readout_label(f: dict[str, Any]) -> str:
    return f"{f['readout']}, S = {f['chains']}"


# ------------------------------------------------------------------------------------ sections
def _score_row(label: str, t: dict[str, Any]) -> list[str]:
    cal = t.get("bits_per_byte_calibrated")
    tau = f" (τ = {t['temperature']:.2f})" if "temperature" in t else ""
    return [label, _f(t["bits_per_byte"]), f"{_f(cal)}{tau}", _f(t["accuracy"])]


def results(r: dict[str, Any]) -> str:
    rows = [["unigram baseline (train counts)", _f(r["unigram_bits_per_byte"]), "–", "–"]]
    missing: list[str] = []
    for name, s in specs(r).items():
        test = r["runs"][name].get("test")
        if test is None:
            rows.append([f"{s.short} (not evaluated yet)", "–", "–", "–"])
            missing.append(name)
        if test is not None and "fair" in test:  # the reported read-out, chosen on validation
            f = test["fair"]
            rows.append(_score_row(f"**{s.short}, fair read-out ({_readout_label(f)})**", f))
            if f["readout"] != f["paper_readout"]:
                rows.append(_score_row(
                    f"{s.short}, the paper's read-out ({f['paper_readout']}, S = {f['chains']})",
                    {**f["paper"], "bits_per_byte_calibrated": None},
                ))  # fmt: skip
        if test is None:
            pass
        elif "chains" in test:  # a chain: its inference modes, the mixture last
            rows += [
                _score_row(f"{s.short}, deterministic chain", test["deterministic"]),
                _score_row(
                    f"{s.short}, one stochastic chain (the paper's inference)", test["one_chain"]
                ),
                _score_row(f"{s.short}, mixture of {test['chains']} stochastic chains", test),
            ]
        else:
            rows.append(_score_row(s.short, test))
    table = _table(["model", "bits per byte", "calibrated (τ)", "top-1 accuracy"], rows)
    if r["dataset"] == "tiny-shakespeare":
        a = r["anchor_nanogpt"]
        table += "\n" + fill(
            "anchor_row", layers=a["layers"], width=a["width"], bits=_f(a["bits_per_byte"], 2)
        )
    out = fill("results", table=table)
    if any("fair" in (r["runs"][n].get("test") or {}) for n in specs(r)):
        out += "\n\n" + fill("fair_readout")
    if missing:
        sp, runs = specs(r), r["runs"]
        reasons = "; ".join(dict.fromkeys(runs[n].get("not_evaluated", "") for n in missing))
        names = ", ".join(sp[n].short for n in missing)
        scores = "; ".join(
            f"{sp[n].short} {_f(runs[n]['trainer_test'].get('bits_per_byte'))} bits per byte, "
            f"accuracy {_f(runs[n]['trainer_test'].get('accuracy'))}"
            for n in missing
        )
        out += "\n\n" + fill("not_evaluated", names=names, reasons=reasons, scores=scores)
    return out


def size(r: dict[str, Any]) -> str:
    plan, runs, names = r["plan"], r["runs"], order(r)
    sp = specs(r)
    p = plan["runs"]

    def ratio(name: str, key: str) -> str:
        m = matching(r, name)
        return f" (×{m[key]:.3f})" if m else ""

    rows = [
        ["architecture", *(architecture(p[n]["config"]) for n in names)],
        ["parameters, non-embedding",
         *(f"{p[n]['parameters']['non_embedding']:,}{ratio(n, 'non_embedding_ratio')}" for n in names)],
        ["parameters, total", *(f"{p[n]['parameters']['total']:,}{ratio(n, 'total_ratio')}" for n in names)],
        ["training FLOPs per token",
         *(f"{p[n]['flops_per_token'] / 1e6:.2f} M{ratio(n, 'flops_per_token_ratio')}" for n in names)],
        ["training tokens", *(f"{runs[n]['train_tokens']:,}" for n in names)],
        ["training FLOPs", *(f"{runs[n]['train_flops'] / 1e12:.2f} T" for n in names)],
        ["training wall time", *(f"{runs[n]['train_seconds'] / 60:.1f} min" for n in names)],
        ["achieved FLOP/s", *(f"{runs[n]['achieved_flops_per_second'] / 1e9:.1f} G" for n in names)],
        ["peak RSS of the training process", *(f"{_f(runs[n]['peak_rss_mib'], 0)} MiB" for n in names)],
    ]  # fmt: skip
    header = ["", *(_column(sp[n]) for n in names)]
    matched = {n: within(m) for n in names if (m := matching(r, n))}
    yes = {True: "yes", False: "NO"}
    if len(matched) == 1:
        (ok_p, ok_f),  = matched.values()  # fmt: skip
        verdict = fill("verdict_one", params=yes[ok_p], flops=yes[ok_f])
    elif matched:
        verdict = fill(
            "verdict_many",
            list="; ".join(f"{sp[n].short} {yes[a]} / {yes[b]}" for n, (a, b) in matched.items()),
        )
    else:
        verdict = ""
    return fill(
        "size",
        table=_table(header, rows),
        budget=f"{plan['budget_flops'] / 1e12:.2f}",
        minutes=plan["args"]["minutes"],
        verdict=verdict,
    ).rstrip()


def _column(s: RunSpec) -> str:
    base = s.entry.column or s.entry.short
    return base if not s.entry.blockwise or s.k == 1 else f"{base}, k={s.k}"


def depth(r: dict[str, Any], sweep: dict[str, Any]) -> str:
    sp, runs = specs(r), r["runs"]
    methods = sweep["methods"]
    layers = r["plan"]["args"]["layers"]
    rows = []
    for k in sweep["ks"]:
        cells = []
        for by_k in methods.values():
            raw, cal = _bits(runs[by_k[k]].get("test")) if k in by_k else (None, None)
            cells.append(f"{_f(raw)} ({_f(cal)})" if raw is not None else "–")
        rows.append([str(k), str(layers // k), *cells])
    header = ["layers per block k", "blocks T",
              *(sp[next(iter(v.values()))].entry.short for v in methods.values())]  # fmt: skip
    refs = []
    for n in sweep["others"]:
        raw, cal = _bits(runs[n].get("test"))
        refs.append(
            f"{sp[n].short} {_f(raw)} ({_f(cal)})" if raw is not None else f"{sp[n].short} –"
        )
    references = fill("depth_references", list=", ".join(refs)) if refs else ""
    return fill("depth", layers=layers, references=references, table=_table(header, rows))


def trajectory(r: dict[str, Any]) -> str:
    traj, runs, sp = r["trajectory"], r["runs"], specs(r)
    names = [n for n in order(r) if n in traj]
    chains = [n for n in names if sp[n].entry.name != "backprop"]
    explanation = []
    if "backprop" in traj:
        explanation.append(fill("trajectory_backprop"))
    if chains:
        explanation.append(fill("trajectory_chain"))
    cosines = [
        f"{COSINE_NAMES.get(n, sp[n].short)} {_f(runs[n].get('output_vectors_mean_pairwise_cosine'))}"
        for n in names
    ]
    explanation.append(fill("trajectory_cosines", list=", ".join(cosines)))
    tables = []
    for n in names:
        rows = traj[n]
        if sp[n].entry.name == "backprop":
            header = ["layer l", "bits per byte", "accuracy", "cos(h_l, W_U[y])", "centered"]
        else:
            header = ["block t", "bits per byte", "accuracy", "cos(z_t, u_y)", "centered", "ᾱ_t"]
        body = [
            [str(t["depth"]), _f(t["bits_per_byte"]), _f(t["accuracy"]), _f(t["cosine"]),
             _f(t.get("cosine_centered")), *([_f(t.get("alpha_bar"), 4)] if len(header) == 6 else [])]
            for t in rows
        ]  # fmt: skip
        table = _table(header, body)
        tables.append(f"{sp[n].label}:\n\n{table}" if len(chains) > 1 and n in chains else table)
    return fill("trajectory", explanation=" ".join(explanation), tables="\n\n".join(tables))


def readouts(r: dict[str, Any]) -> str | None:
    """Every read-out along each chain on test (one stochastic chain, S = 1, and the deterministic
    chain): the block's own softmax p_t next to head(z_t)."""
    tables = []
    for n, s in specs(r).items():
        f = (r["runs"][n].get("test") or {}).get("fair")
        if not f or s.entry.name == "backprop":
            continue
        det = {row["readout"]: row for row in f.get("deterministic", [])}
        body = [
            [row["readout"], _f(row["position"], 2), _f(row["bits_per_byte"]),
             _f(row["accuracy"]), _f(det.get(row["readout"], {}).get("bits_per_byte")),
             _f(det.get(row["readout"], {}).get("accuracy"))]
            for row in f["readouts"] if row["chains"] == 1
        ]  # fmt: skip
        header = ["read-out", "position", "bits (1 chain)", "accuracy", "bits (deterministic)",
                  "accuracy"]  # fmt: skip
        tables.append(f"{s.label} (reported: {_readout_label(f)}):\n\n{_table(header, body)}")
    if not tables:
        return None
    return fill("readouts", tables="\n\n".join(tables))


def tuned_lens(r: dict[str, Any]) -> str | None:
    lens = (r["runs"].get("backprop", {}).get("test") or {}).get("tuned_lens")
    if not lens:
        return None
    body = [
        [str(t["depth"]), _f(t["logit_lens_bits_per_byte"]), _f(t["logit_lens_accuracy"]),
         _f(t["tuned_lens_bits_per_byte"]), _f(t["tuned_lens_accuracy"])]
        for t in lens
    ]  # fmt: skip
    header = ["layer l", "logit lens bits", "accuracy", "tuned lens bits", "accuracy"]
    return fill("tuned_lens", table=_table(header, body))


def samples(r: dict[str, Any]) -> str:
    out = fill("samples", prompt=r["samples"].get("prompt", ""))
    for n in order(r):
        if n in r["samples"]:
            out += "\n\n" + fill("sample", label=r["runs"][n]["label"], text=r["samples"][n])
    return out


# ---------------------------------------------------------------------------------- discussion
def discussion(r: dict[str, Any]) -> list[str]:
    """What the numbers of this report say, and what they cannot say (the template's paragraphs)."""
    items = []
    traj, runs = r["trajectory"], r["runs"]
    chain = chain_run(r)
    sweep = depth_sweep(r)
    if "backprop" in traj:
        items.append(_discuss_backprop(traj["backprop"]))
    if chain is not None:
        items.append(_discuss_chain(r, chain))
        if runs.get("backprop", {}).get("test"):
            items.append(_discuss_equal_flops(r, chain))
    others = _discuss_others(r, chain, sweep)
    if others:
        items.append(others)
    if sweep is not None:
        items.append(_discuss_depth(r, sweep))
    many = len(order(r)) > 2
    scaling = (
        fill("limits_scaling_sweep", layers=r["plan"]["args"]["layers"])
        if sweep
        else fill("limits_scaling")
    )
    items.append(
        fill("discussion_limits", either="any" if many else "either",
             both="all" if many else "both", scaling=scaling)
    )  # fmt: skip
    return items


def _discuss_backprop(bp: list[dict[str, Any]]) -> str:
    L = len(bp) - 1
    bits = [t["bits_per_byte"] for t in bp]
    # the lens is not trained on h_0 (it can read worse than uniform there): measure from layer 1
    gain = bits[1] - bits[-1] if L >= 1 else 0.0
    late = (bits[L // 2] - bits[-1]) / gain if gain > 0 and L >= 2 else float("nan")
    return fill(
        "discussion_backprop",
        where=fill("where_late" if late > 0.5 else "where_steady"),
        bits=", ".join(f"{b:.2f}" for b in bits),
        layers=L,
        late=f"{100 * late:.0f}%",
        half=L // 2,
        cos_first=f"{bp[min(1, L)]['cosine_centered']:.2f}",
        cos_last=f"{bp[-1]['cosine_centered']:.2f}",
    )


def _discuss_chain(r: dict[str, Any], name: str) -> str:
    rows = r["trajectory"][name]
    T = len(rows) - 1
    bits = [t["bits_per_byte"] for t in rows]
    acc = [t["accuracy"] for t in rows]
    best_t = min(range(1, T + 1), key=lambda t: bits[t])
    after = ""
    if best_t < T:
        delta = acc[T] - acc[best_t]
        accuracy = (
            fill("chain_confidence", delta=f"{delta:+.3f}")
            if abs(delta) < 0.03
            else fill("chain_accuracy", delta=f"{delta:+.3f}")
        )
        after = fill("chain_worse_at_end", worse=f"{bits[T] - bits[best_t]:.2f}", accuracy=accuracy)
    k = specs(r)[name].k
    return fill(
        "discussion_chain",
        T=T,
        accuracies=", ".join(f"{a:.3f}" for a in acc[1:]),
        share=f"{acc[1] / max(acc[1:]):.0%}",
        bits=", ".join(f"{b:.2f}" for b in bits),
        best_t=best_t,
        best_bits=f"{bits[best_t]:.2f}",
        after_best=after,
        cos_first=f"{rows[1]['cosine_centered']:.2f}",
        cos_last=f"{rows[-1]['cosine_centered']:.2f}",
        raw_first=f"{rows[1]['cosine']:.2f}",
        raw_last=f"{rows[-1]['cosine']:.2f}",
        pairwise=f"{r['runs'][name].get('output_vectors_mean_pairwise_cosine', float('nan')):.2f}",
        own_layers="single layer" if k == 1 else f"{k} layers",
    )


def _discuss_equal_flops(r: dict[str, Any], name: str) -> str:
    runs = r["runs"]
    np_test, bp = runs[name]["test"], runs["backprop"]["test"]
    bp_bits = bp["bits_per_byte"]
    best_np = min(np_test["deterministic"]["bits_per_byte"], np_test["bits_per_byte"])
    bp_cal = bp.get("bits_per_byte_calibrated", bp_bits)
    best_np_cal = min(
        np_test["deterministic"].get("bits_per_byte_calibrated", best_np),
        np_test.get("bits_per_byte_calibrated", best_np),
    )
    k = specs(r)[name].k
    return fill(
        "discussion_equal_flops",
        bp=f"{bp_bits:.2f}",
        bp_cal=f"{bp_cal:.2f}",
        np=f"{best_np:.2f}",
        np_cal=f"{best_np_cal:.2f}",
        chains=np_test["chains"],
        mixture=f"{np_test['bits_per_byte']:.2f}",
        deterministic=f"{np_test['deterministic']['bits_per_byte']:.2f}",
        one_chain=f"{np_test['one_chain']['bits_per_byte']:.2f}",
        unigram=f"{r['unigram_bits_per_byte']:.2f}",
        bp_accuracy=f"{bp['accuracy']:.3f}",
        np_accuracy=f"{max(np_test['accuracy'], np_test['deterministic']['accuracy']):.3f}",
        ahead="Back-prop" if bp_cal < best_np_cal else "NoProp",
        gap=f"{abs(bp_cal - best_np_cal):.2f}",
        tau_deterministic=f"{np_test['deterministic'].get('temperature', float('nan')):.2f}",
        tau_mixture=f"{np_test.get('temperature', float('nan')):.2f}",
        block_models="one-layer models" if k == 1 else f"{k}-layer models",
    )


def _discuss_others(r: dict[str, Any], chain: str | None, sweep: dict[str, Any] | None) -> str:
    sp, runs = specs(r), r["runs"]
    names = [
        n
        for n, s in sp.items()
        if n not in ("backprop", chain) and not (sweep and s.entry.blockwise)
    ]
    if not names:
        return ""
    parts = []
    for n in names:
        raw, cal = _bits(runs[n].get("test"))
        parts.append(f"{sp[n].short} {_f(raw, 2)} ({_f(cal, 2)})" if raw is not None
                     else f"{sp[n].short} not evaluated yet")  # fmt: skip
    bp_raw, bp_cal = _bits(runs.get("backprop", {}).get("test"))
    bp = f"; back-prop {_f(bp_raw, 2)} ({_f(bp_cal, 2)})" if bp_raw is not None else ""
    return fill("discussion_others", bp=bp, list=", ".join(parts))


def _discuss_depth(r: dict[str, Any], sweep: dict[str, Any]) -> str:
    sp, runs = specs(r), r["runs"]
    _, bp_cal = _bits(runs.get("backprop", {}).get("test"))
    parts = []
    for by_k in sweep["methods"].values():
        cals = {k: _bits(runs[n].get("test"))[1] for k, n in by_k.items()}
        known = {k: v for k, v in cals.items() if v is not None}
        if not known:
            parts.append(f"{sp[next(iter(by_k.values()))].entry.short} not evaluated yet")
            continue
        best_k = min(known, key=lambda k: known[k])
        gap = f", {100 * (known[best_k] / bp_cal - 1):+.0f}% vs back-prop" if bp_cal else ""
        parts.append(
            fill(
                "depth_method",
                model=sp[next(iter(by_k.values()))].entry.short,
                values=", ".join(_f(cals.get(k), 2) for k in sweep["ks"]),
                best_k=best_k,
                best_bits=f"{known[best_k]:.2f}",
                gap=gap,
            )
        )
    return fill(
        "discussion_depth",
        layers=r["plan"]["args"]["layers"],
        ks=", ".join(str(k) for k in sweep["ks"]),
        list="; ".join(parts),
    )


# --------------------------------------------------------------------------------------- whole
def header(r: dict[str, Any]) -> str:
    corpus, m = r.get("corpus") or {}, r["machine"]
    context = next(iter(r["plan"]["runs"].values()))["config"]["context"]
    return fill(
        "header",
        dataset=r["dataset"],
        source=corpus.get("source", ""),
        sha256=corpus.get("sha256", ""),
        bytes=corpus.get("bytes", {}),
        test_windows=r["test_windows"],
        context=context,
        cpu=m["cpu"],
        cores=m["cores"],
        torch=m["torch"],
        threads=m["torch_threads"],
        device=m["device"],
    )


def render_markdown(r: dict[str, Any]) -> str:
    """report.md from report.json's content."""
    blocks = [header(r), results(r), size(r)]
    sweep = depth_sweep(r)
    if sweep is not None:
        blocks.append(depth(r, sweep))
    if r["trajectory"]:
        blocks.append(trajectory(r))
    blocks += [b for b in (readouts(r), tuned_lens(r)) if b is not None]
    blocks.append(samples(r))
    blocks.append(fill("discussion", items="\n".join(discussion(r))))
    return "\n\n".join(blocks) + "\n"


__all__ = ["depth_sweep", "render_markdown", "sections"]
