"""BG/NBD and Gamma-Gamma fitted with pymc-marketing: probability alive, expected purchases, order value and CLV.

Why pymc-marketing 0.19.2: it is the maintained library of the field (lifetimes is archived since 2020, btyd since
2022), and 0.19.2 is its last release for Python 3.11, the Python of this project's image and of Debian 12; every
0.19.3+ and 1.x release needs Python >= 3.12. The calls used here (``BetaGeoModel`` / ``GammaGammaModel``,
``fit(data=..., method="map")``, ``expected_*``) are the same in 1.x, so moving up is a pin change once the image is
on Python 3.12.

Fitting is MAP (``pymc.find_MAP``, L-BFGS) with flat priors on every parameter, so the point found is the maximum of
the likelihood, as lifetimes fitted: seconds on a million customers, where NUTS sampling would take hours.
pymc-marketing's default BG/NBD priors are not used: they suit periods of about a week (alpha ~ Weibull(2, 10),
a + b >= 1), and with days as periods they pulled the fit away from the data (alpha 106 instead of 212 on 5,000
simulated customers, 9 % fewer expected purchases; a + b held at 1 where the data said 0.7). Its Gamma-Gamma
priors are flat already. A fit the data cannot pin down is refused rather than written (``UnusableFit``), and so is
one the optimizer left short of the maximum (``check_converged``: an independent search from the fit).

PyTensor compiles the model's log-density with a C compiler when one is installed; without one (slim images) its
pure-Python fallback is about 80 times slower, so the NUMBA backend is used instead.

Units: one period is one UTC day and one purchase is one purchase *day* (several orders on a day count once), as in
customer_aggregates/. "Expected purchases" are expected purchase days; the expected average order value is the
Gamma-Gamma expected revenue of a purchase day.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from scoring.inputs import ModelInputs

#: The library and the range of it this module is written and tested against.
MODEL_LIBRARY: Final = "pymc-marketing"
INSTALL_HINT: Final = "pip install 'clickstream-rfm[clv]'  (pymc-marketing 0.19.x, Python 3.11)"
#: Expected purchases are predicted over these horizons (days); the clv/ columns are named after them.
PURCHASE_HORIZONS_DAYS: Final = (30, 90, 365)
#: Fewer buyers or repeat buyers than this cannot identify the four BG/NBD or three Gamma-Gamma parameters.
MIN_BUYERS: Final = 20
MIN_REPEAT_BUYERS: Final = 10


class ModelLibraryMissing(ImportError):  # noqa: N818 - it is an ImportError, named for what is missing
    """pymc-marketing is not installed (it is the optional ``clv`` extra)."""


class NotEnoughData(ValueError):  # noqa: N818 - a ValueError, named for the condition
    """Too few buyers or repeat buyers to fit the models."""


class UnusableFit(ValueError):  # noqa: N818 - a ValueError, named for the condition
    """The models fitted, but to values whose predictions are not money (e.g. Gamma-Gamma's q <= 1)."""


@dataclass(frozen=True, slots=True)
class ClvConfig:
    """How CLV is valued: over ``horizon_months``, discounted at ``annual_discount_rate``, times ``margin``.

    A month is 30 days, pymc-marketing's step with daily periods: 12 months are 360 days."""

    horizon_months: int = 12
    annual_discount_rate: float = 0.10
    margin: float = 1.0

    @property
    def monthly_discount_rate(self) -> float:
        """The monthly rate equivalent to the annual one: (1 + annual) ** (1/12) - 1."""
        return float((1.0 + self.annual_discount_rate) ** (1.0 / 12.0) - 1.0)


@dataclass(frozen=True, slots=True)
class ClvResult:
    """Predictions aligned with ``inputs.buyers`` (same order) and the JSON-ready report of the fit."""

    probability_alive: npt.NDArray[np.float64]
    expected_purchases: dict[int, npt.NDArray[np.float64]]  # horizon in days -> per customer
    expected_average_order_value: npt.NDArray[np.float64]
    clv: npt.NDArray[np.float64]
    report: dict[str, Any]


def library_version(name: str = MODEL_LIBRARY) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def parameters_text(params: dict[str, float]) -> str:
    """Fitted parameters as said to a person: ``r = 0.8874, alpha = 13.29``."""
    return ", ".join(f"{name} = {value:.4g}" for name, value in params.items())


def require_model_library_installed() -> None:
    """Raise ``ModelLibraryMissing`` with the install command when pymc-marketing is not installed: a check of its
    metadata, before any work, that costs nothing (its import takes seconds, so a wrong input would wait them out
    before being named); ``require_model_library`` imports it when the fit needs it."""
    if library_version() is None:
        raise ModelLibraryMissing(
            f"CLV scoring needs {MODEL_LIBRARY}, which is not installed: {INSTALL_HINT}"
        )


def require_model_library() -> None:
    """Raise ``ModelLibraryMissing`` with the install command when pymc-marketing cannot be imported."""
    try:
        import pymc_marketing.clv  # noqa: F401
    except ImportError as error:
        raise ModelLibraryMissing(
            f"CLV scoring needs {MODEL_LIBRARY} ({error.name or error} is missing): {INSTALL_HINT}"
        ) from None


def pytensor_backend() -> str:
    """'c' when PyTensor has a C compiler, else 'numba' (its pure-Python fallback is far too slow here)."""
    import pytensor

    return "c" if pytensor.config.cxx else "numba"


@contextmanager
def _quiet_backend() -> Iterator[str]:
    import pytensor

    backend = pytensor_backend()
    mode = "NUMBA" if backend == "numba" else pytensor.config.mode
    with warnings.catch_warnings(), pytensor.config.change_flags(mode=mode):
        # Advice printed at import/compile time that says nothing about this data (BLAS linkage, FutureWarnings).
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield backend


def _flat(values: Any, customer_ids: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """A MAP prediction (chain=1, draw=1, customer_id) as a float array in the input's customer order."""
    if "customer_id" in values.coords and not np.array_equal(
        values.coords["customer_id"].values, customer_ids
    ):
        raise AssertionError("the model returned customers in another order")
    array = np.asarray(values.values, dtype=np.float64).reshape(-1)
    if array.shape != customer_ids.shape:
        raise AssertionError(f"expected {customer_ids.shape[0]} predictions, got {array.shape[0]}")
    return array


# ------------------------------------------------------------------------------------------ closed forms (diagnostics)
def bg_nbd_log_likelihood(
    params: dict[str, float], x: npt.NDArray[Any], t_x: npt.NDArray[Any], t: npt.NDArray[Any]
) -> float:
    """Sum of the BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6) at ``params``."""
    from scipy.special import gammaln

    r, alpha, a, b = (params[k] for k in ("r", "alpha", "a", "b"))
    x = x.astype(np.float64)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + t)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x), -np.inf
        )
    return float(np.sum(a1 + a2 + np.logaddexp(a3, a4)))


def bg_nbd_expected_repeat_purchases(
    params: dict[str, float], t: npt.NDArray[Any]
) -> npt.NDArray[np.float64]:
    """E[X(t)] for a customer observed for t periods since the first purchase (FHL 2005, eq. 7)."""
    from scipy.special import hyp2f1

    r, alpha, a, b = (params[k] for k in ("r", "alpha", "a", "b"))
    t = t.astype(np.float64)
    z = t / (alpha + t)
    value = (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, z))
    return np.asarray(value, dtype=np.float64)


def gamma_gamma_log_likelihood(params: dict[str, float], x: npt.NDArray[Any], m: npt.NDArray[Any]) -> float:
    """Sum of the Gamma-Gamma log-likelihood of repeat buyers' mean order values (Fader, Hardie & Lee 2005b)."""
    from scipy.special import gammaln

    p, q, v = (params[k] for k in ("p", "q", "v"))
    x = x.astype(np.float64)
    px = p * x
    ll = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(v)
        + (px - 1) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(x * m + v)
    )
    return float(np.sum(ll))


def _flat_bg_nbd_priors() -> dict[str, Any]:
    """Flat priors on the BG/NBD parameters (``model_config`` of ``BetaGeoModel``): the MAP point is then the maximum
    of the likelihood, whatever the time unit (see the module docstring for what the default priors did with days)."""
    from pymc_extras.prior import Prior

    return {name: Prior("HalfFlat") for name in ("r", "alpha", "a", "b")}


#: How far outside the repeat buyers' observed mean spends the fitted population mean may lie, as a share of the
#: largest: a fit that lands further out found no spend distribution in the data (all spends nearly equal, or too few
#: buyers), and ran off to parameters whose ratio p*v/(q-1) is arbitrary.
_SPEND_RANGE_SLACK: Final = 0.05


def population_mean_spend(params: dict[str, float]) -> float:
    """Gamma-Gamma's population mean spend per purchase, p * v / (q - 1): every buyer's expected order value lies
    between it and the buyer's own mean."""
    return params["p"] * params["v"] / (params["q"] - 1)


def check_spend_fit(params: dict[str, float], spends: npt.NDArray[np.float64]) -> None:
    """Refuse a Gamma-Gamma fit whose population mean spend p*v/(q-1) is not money, or not a spend the repeat
    buyers had.

    Every buyer's expected order value lies between the population mean and the buyer's own mean: with q <= 1 the
    mean is negative or infinite (so is every one-time buyer's), and a mean outside the observed spends puts nonsense
    into every prediction (seen: 10,881 for buyers who all spent 50, with p, q and v near 1e175, 1e278 and 1e107,
    when the fit started at v = 1; started at the median spend, such buyers get their one spend).
    """
    p, q, v = params["p"], params["q"], params["v"]
    if q <= 1:
        raise UnusableFit(
            f"Gamma-Gamma fitted q = {q:.3f} <= 1: the repeat buyers' spend is too heavy-tailed for the model "
            "(one-time buyers would get a negative or infinite expected spend); nothing was written. Look at the "
            "largest monetary_value rows (outliers, test orders), or score a later as-of with more repeat buyers"
        )
    low, high = float(spends.min()), float(spends.max())
    slack = _SPEND_RANGE_SLACK * high
    mean = population_mean_spend(params)
    if np.isfinite(mean) and low - slack <= mean <= high + slack:
        return
    raise UnusableFit(
        f"Gamma-Gamma fitted p = {p:.4g}, q = {q:.4g}, v = {v:.4g}: a population mean spend of {mean:.4g} per "
        f"purchase day, outside the {len(spends):,} repeat buyers' mean spends ({low:.2f} to {high:.2f}); the fit "
        "ran off (too few repeat buyers, or spends the model cannot spread), and nothing was written. "
        "Score a later as-of with more repeat buyers"
    )


#: BG/NBD's purchase rates follow Gamma(r, alpha), whose coefficient of variation is 1/sqrt(r): from this r and alpha
#: on, the buyers' rates differ by under 1% (a kept fit is noted); a little beyond (about 3e4), pymc-marketing's
#: predictions are no longer finite (its hypergeometric terms overflow), and the fit is refused.
_RATE_SPREAD_LOST: Final = 1e4


#: How much higher, per customer, an independent optimizer may find the log-likelihood than at a fit taken for its
#: maximum. Converged fits leave under 1e-9 on all their customers; the Gamma-Gamma fit that stopped short (spends
#: of about 1e5 fitted from p = q = v = 1, at p = 5388 where the maximum is at 7.8) left 0.024, with order values and
#: CLVs off by factors of 0.3 to 1.6. A sample's own maximum lies above the whole data's by about k / (2n) per
#: customer (k parameters, n customers; seen: 1.7e-5 on a sample of 50,000), so a sample does not trip it.
_STOPPED_SHORT_GAIN: Final = 1e-3
#: The check evaluates the likelihood on at most this many customers (a fixed sample of the rest): a few seconds on
#: any data, where the whole of a million customers would add about as long as the fits themselves.
_CHECKED_CUSTOMERS: Final = 50_000


def check_sample(customers: int) -> npt.NDArray[np.int64]:
    """The rows the convergence check reads: all of them, or a fixed sample (the same on every run)."""
    if customers <= _CHECKED_CUSTOMERS:
        return np.arange(customers)
    return np.sort(np.random.default_rng(0).choice(customers, _CHECKED_CUSTOMERS, replace=False))


def likelihood_gain(
    log_likelihood: Callable[[dict[str, float]], float], params: dict[str, float], customers: int
) -> tuple[float, dict[str, float]]:
    """How much higher, per customer, the closed-form ``log_likelihood`` gets than at ``params``, and where:
    scipy's Nelder-Mead on the parameters' logarithms, started at ``params``. Not a gradient method as the library's
    L-BFGS is: along the flat ridges where that one stops, a gradient method started there stops too."""
    from scipy.optimize import minimize

    names = tuple(params)
    start = np.log([params[name] for name in names])

    def negative(logs: npt.NDArray[np.float64]) -> float:
        with np.errstate(all="ignore"):
            value = log_likelihood(dict(zip(names, np.exp(logs).tolist(), strict=True)))
        return -value / customers if np.isfinite(value) else np.inf

    at_start = negative(start)
    found = minimize(
        negative,
        start,
        method="Nelder-Mead",
        options={"maxfev": 100 * len(names), "xatol": 1e-4, "fatol": 1e-10},
    )
    if not np.isfinite(found.fun) or found.fun >= at_start:
        return 0.0, params
    return float(at_start - found.fun), dict(zip(names, np.exp(found.x).tolist(), strict=True))


def check_converged(
    model: str, log_likelihood: Callable[[dict[str, float]], float], params: dict[str, float], customers: int
) -> float:
    """Refuse a fit the library's optimizer left short of the likelihood's maximum (its predictions would be off
    with exit 0); returns the gain an independent optimizer found (per customer), for _model.json."""
    gain, better = likelihood_gain(log_likelihood, params, customers)
    if gain < _STOPPED_SHORT_GAIN:
        return gain
    raise UnusableFit(
        f"{model}'s fit stopped short of the likelihood's maximum: pymc-marketing's optimizer returned "
        f"{parameters_text(params)}, and the log-likelihood is {gain:.3g} per customer higher at "
        f"{parameters_text(better)}; its "
        f"predictions would be off, so nothing was written. A change in the libraries may have caused it: report it "
        f"with their versions ({_versions()})"
    )


def _versions() -> str:
    names = (MODEL_LIBRARY, "pymc", "pytensor", "scipy")
    return ", ".join(f"{name} {library_version(name) or 'not installed'}" for name in names)


def check_purchase_fit(params: dict[str, float], purchases: dict[int, npt.NDArray[np.float64]]) -> None:
    """Refuse, naming the model and why, a BG/NBD fit whose expected purchases are not finite."""
    bad = max(int(np.count_nonzero(~np.isfinite(values))) for values in purchases.values())
    if not bad:
        return
    r, alpha = params["r"], params["alpha"]
    why = (
        f"the buyers' purchase rates barely differ (r and alpha ran off together, at a rate of {r / alpha:.4g} "
        "purchase days a day)"
        if min(r, alpha) >= _RATE_SPREAD_LOST
        else "the fit is at a point where the model's terms overflow"
    )
    raise UnusableFit(
        f"BG/NBD fitted {parameters_text(params)}, and {bad:,} buyers' expected purchases are not finite there: "
        f"{why}; nothing was written. Score a later as-of, or more buyers, so that their purchase rates can be told "
        "apart"
    )


#: BG/NBD's dropout probabilities follow Beta(a, b); from this a + b on, their standard deviation between buyers is
#: under 1.6 points of probability (sqrt(p(1 - p) / (a + b + 1)), p(1 - p) <= 1/4): the fit found no spread and ran
#: off along the line a/(a + b) = mean, so every buyer is given one dropout probability. Still a model (the limit
#: is a fixed p), but one an analyst should know P(alive) and CLV rest on.
_DROPOUT_SPREAD_LOST: Final = 1_000.0


#: BG/NBD's a below this: Beta(a, b) puts (almost) every buyer who made a repeat purchase day at a dropout
#: probability of 0 (with a and b both near 0, a U-shape whose mass sits at 0 and 1: buyers drop out after their
#: first purchase day or never). A maximum of the likelihood at the edge of the parameter space, seen on small
#: samples (a = 4.4e-8, b = 7.8e-8 from 30 buyers).
_DROPOUT_AT_EXTREMES: Final = 1e-3


def dropout_notes(params: dict[str, float]) -> list[str]:
    """What an analyst should know of a BG/NBD fit's purchase rates and dropout process (nothing when their spread
    is identified)."""
    notes = []
    r, alpha = params["r"], params["alpha"]
    if min(r, alpha) >= _RATE_SPREAD_LOST:
        notes.append(
            f"BG/NBD found no spread of the purchase rate between buyers (r = {r:.4g}, alpha = {alpha:.4g}): every "
            f"buyer is given the same rate while alive, {r / alpha:.4g} purchase days a day, and expected purchases "
            "and CLV rest on that"
        )
    a, b = params["a"], params["b"]
    if a + b >= _DROPOUT_SPREAD_LOST:
        notes.append(
            f"BG/NBD found no spread of the dropout probability between buyers (a = {a:.4g}, b = {b:.4g}): every "
            f"buyer is given the same chance of dropping out after a purchase day, {a / (a + b):.3g}, and P(alive) "
            "and CLV rest on that; more purchase history (a later as-of, more buyers) may identify a spread"
        )
    if a < _DROPOUT_AT_EXTREMES:
        notes.append(
            f"BG/NBD put the dropout probability at its extremes (a = {a:.4g}, b = {b:.4g}): a buyer with two or "
            "more repeat purchase days is read as one who never drops out, P(alive) near 1 however long they have "
            "been quiet, so churn readings (P(alive), segments such as Cannot lose them) and CLV rest on that; more "
            "buyers or purchase history (a later as-of) may identify a spread"
        )
    return notes


#: |Pearson r| between repeat buyers' purchase days and mean spend from which Gamma-Gamma's independence assumption
#: is said not to hold (pymc-marketing and lifetimes document the check; they give no threshold, 0.3 is a common one).
DEPENDENT_SPEND_CORRELATION: Final = 0.3


#: Gamma-Gamma's spend per purchase has a coefficient of variation of 1/sqrt(p) within a buyer, its buyers' mean
#: spends one of 1/sqrt(q) between them: from this p or q on it is under 0.1%, so the fit found (almost) no spread
#: there and ran off along the line of the observed mean.
_SPEND_SPREAD_LOST: Final = 1e6
#: From these parameters on, the log-gamma terms of the likelihood (about p * x * log(p * x)) are so large that
#: float64 leaves no digit of their sum: the value written would be noise (seen: -3.3e12 where the exact value at
#: the same point is -4.3e12), so none is written.
_LOG_LIKELIHOOD_PRECISION_LOST: Final = 1e12


def reported_spend_log_likelihood(
    params: dict[str, float], x: npt.NDArray[Any], m: npt.NDArray[Any]
) -> float | None:
    """The Gamma-Gamma log-likelihood as the report gives it: none at parameters where float64 would make it noise
    (see ``spend_notes``, which says so)."""
    if max(params["p"], params["q"]) >= _LOG_LIKELIHOOD_PRECISION_LOST:
        return None
    return gamma_gamma_log_likelihood(params, x, m)


def spend_notes(params: dict[str, float]) -> list[str]:
    """What an analyst should know of a Gamma-Gamma fit that found no spread of spend (nothing when it did)."""
    p, q = params["p"], params["q"]
    if max(p, q) < _SPEND_SPREAD_LOST:
        return []
    mean = population_mean_spend(params)
    beyond = (
        "; its log-likelihood is beyond float precision at such parameters and is not written"
        if max(p, q) >= _LOG_LIKELIHOOD_PRECISION_LOST
        else ""
    )
    return [
        f"Gamma-Gamma found no spread of spend per purchase (p = {p:.4g}, q = {q:.4g}): every buyer's expected "
        f"order value is about the population mean, {mean:.2f}, and the parameters themselves mean nothing beyond "
        f"that{beyond}"
    ]


def independence_notes(correlation: float | None, fitted: int) -> list[str]:
    """What an analyst should know when spend per purchase moves with purchase frequency (Gamma-Gamma assumes not)."""
    if correlation is None or abs(correlation) < DEPENDENT_SPEND_CORRELATION:
        return []
    direction = "higher" if correlation > 0 else "lower"
    return [
        f"spend per purchase correlates with purchase frequency over the {fitted:,} repeat buyers fitted "
        f"(r = {correlation:.2f}: frequent buyers spend {direction} per purchase): Gamma-Gamma assumes they are "
        "independent, so its expected order values, and CLV with them, are biased; segment the buyers or read "
        "CLV as a ranking"
    ]


def _spend_fit_start(spends: npt.NDArray[np.float64]) -> dict[str, float]:
    """Where the Gamma-Gamma MAP fit starts: v (a spend; p and q have no unit) at the median of the repeat buyers'
    mean spends.

    From pymc's start, p = q = v = 1, spends in money of a large unit (a mean of 1.5e5, as in KRW, IDR or for B2B
    orders) stopped the optimizer short of the maximum: p, q and v, every expected order value and every CLV depended
    on the currency, off by factors of 0.3 to 1.6, with exit 0. The model is scale-free (spends times s give the same
    p and q and v times s), and the optimizer works on log v: started at the median it sees every currency as the
    one whose median spend is 1. (Dividing the spends by their median instead hung PyTensor's graph rewriting when
    every spend was the same: all of them exactly 1.)"""
    return {"v": float(np.median(spends))}


def _parameters(model: Any, names: tuple[str, ...]) -> dict[str, float]:
    """The MAP point of a fitted model, at full precision (``fit_summary`` rounds to three decimals)."""
    posterior = model.fit_result
    return {name: float(np.asarray(posterior[name].values).reshape(-1)[0]) for name in names}


def fit_and_predict(
    inputs: ModelInputs, config: ClvConfig, *, step: Callable[[str], None] | None = None
) -> ClvResult:
    """Fit BG/NBD on every buyer and Gamma-Gamma on repeat buyers who spent (MAP), then predict for every buyer.

    ``step`` is called with a short description before each stage (progress for a person watching).
    """
    require_model_library()
    import pandas as pd
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    announce = step or (lambda _: None)
    table = inputs.buyers
    buyers, repeat = table.num_rows, inputs.repeat_buyers
    # Gamma-Gamma models a buyer's spend per purchase as Gamma distributed (its likelihood takes the log of the
    # mean): a repeat buyer whose repeat purchases all had revenue 0 (which the contract allows) cannot be fitted,
    # and one would make the whole fit fail. Such buyers are left out of that fit only, and still predicted.
    repeat_frequency = table.column("frequency").to_numpy() > 0
    spent = pc.fill_null(pc.greater(table.column("monetary_value"), 0), False).to_numpy(zero_copy_only=False)
    fitted = int(np.count_nonzero(repeat_frequency & spent))
    if buyers < MIN_BUYERS or fitted < MIN_REPEAT_BUYERS:
        raise NotEnoughData(
            f"{buyers} buyers and {fitted} repeat buyers with a positive mean spend: BG/NBD needs at least "
            f"{MIN_BUYERS} buyers and Gamma-Gamma at least {MIN_REPEAT_BUYERS} such repeat buyers (purchases on "
            "two days or more); nothing is scored until then"
        )
    frame = pd.DataFrame(
        {
            "customer_id": np.asarray(
                table.column("customer_id").to_numpy(zero_copy_only=False), dtype=object
            ),
            "frequency": table.column("frequency").to_numpy(),
            "recency": table.column("recency").to_numpy(),
            "T": table.column("T").to_numpy(),
            "monetary_value": table.column("monetary_value").to_numpy(),
        }
    )
    ids = frame["customer_id"].to_numpy()
    spend_frame = frame[repeat_frequency & spent]
    spends = spend_frame["monetary_value"].to_numpy()  # the repeat buyers' mean spends, all positive
    timings: dict[str, float] = {}
    with _quiet_backend() as backend:
        announce(f"fitting BG/NBD on {buyers:,} buyers ({backend} backend)")
        started = time.perf_counter()
        bg = BetaGeoModel(model_config=_flat_bg_nbd_priors())
        bg.fit(data=frame[["customer_id", "frequency", "recency", "T"]], method="map", progressbar=False)
        timings["bg_nbd_fit"] = time.perf_counter() - started

        announce(f"fitting Gamma-Gamma on {fitted:,} repeat buyers")
        started = time.perf_counter()
        gg = GammaGammaModel()
        gg.fit(
            data=spend_frame[["customer_id", "monetary_value", "frequency"]],
            method="map",
            progressbar=False,
            start=_spend_fit_start(spends),
        )
        timings["gamma_gamma_fit"] = time.perf_counter() - started
        gg_params = _parameters(gg, ("p", "q", "v"))
        check_spend_fit(gg_params, spends)
        bg_params = _parameters(bg, ("r", "alpha", "a", "b"))
        x = frame["frequency"].to_numpy()
        t_x, t = frame["recency"].to_numpy(), frame["T"].to_numpy()
        rx, rm = spend_frame["frequency"].to_numpy(), spends
        announce("checking that each fit is the likelihood's maximum")
        # a fit noted as run off lies on a ridge of the likelihood, where further along is a little higher and the
        # predictions the same: neither checked nor refused
        bg_rows, gg_rows = check_sample(buyers), check_sample(fitted)
        bg_notes, gg_notes = dropout_notes(bg_params), spend_notes(gg_params)
        bg_gain = (
            None
            if bg_notes
            else check_converged(
                "BG/NBD",
                lambda p: bg_nbd_log_likelihood(p, x[bg_rows], t_x[bg_rows], t[bg_rows]),
                bg_params,
                len(bg_rows),
            )
        )
        gg_gain = (
            None
            if gg_notes
            else check_converged(
                "Gamma-Gamma",
                lambda p: gamma_gamma_log_likelihood(p, rx[gg_rows], rm[gg_rows]),
                gg_params,
                len(gg_rows),
            )
        )

        announce("predicting probability alive, purchases, order value and CLV")
        started = time.perf_counter()
        alive = _flat(bg.expected_probability_alive(data=frame), ids)
        purchases = {
            days: _flat(bg.expected_purchases(data=frame, future_t=days), ids)
            for days in PURCHASE_HORIZONS_DAYS
        }
        order_value = _flat(gg.expected_customer_spend(data=frame), ids)
        clv = config.margin * _flat(
            gg.expected_customer_lifetime_value(
                transaction_model=bg,
                data=frame,
                future_t=config.horizon_months,
                discount_rate=config.monthly_discount_rate,
                time_unit="D",
            ),
            ids,
        )
        timings["predict"] = time.perf_counter() - started

    check_purchase_fit(bg_params, purchases)
    predictions = {
        "probability_alive": alive,
        "expected order value": order_value,
        "clv": clv,
        **{f"expected purchases over {days} days": values for days, values in purchases.items()},
    }
    for name, values in predictions.items():
        bad = int(np.count_nonzero(~np.isfinite(values) | (values < 0)))
        if bad:
            raise UnusableFit(f"{bad} buyers got a negative or non-finite {name}; nothing was written")
    bg_ll = bg_nbd_log_likelihood(bg_params, x, t_x, t)
    gg_ll = reported_spend_log_likelihood(gg_params, rx, rm)
    expected_in_sample = float(bg_nbd_expected_repeat_purchases(bg_params, t).sum())
    observed_in_sample = float(x.sum())
    population_mean = population_mean_spend(gg_params)  # q > 1, checked above
    correlation = _correlation(rx, rm) if fitted > 2 else None
    report: dict[str, Any] = {
        "library": {
            "name": MODEL_LIBRARY,
            "version": library_version(),
            "method": "map",
            "priors": "flat (the fit is the maximum-likelihood point)",
            "pytensor_backend": backend,
        },
        "as_of": inputs.as_of.isoformat(),
        "time_unit": "day (one purchase = one purchase day)",
        "customers": inputs.customers,
        "buyers": buyers,
        "repeat_buyers": repeat,
        "valuation": {
            "horizon_months": config.horizon_months,
            "annual_discount_rate": config.annual_discount_rate,
            "monthly_discount_rate": config.monthly_discount_rate,
            "margin": config.margin,
        },
        "bg_nbd": {
            "parameters": bg_params,
            "log_likelihood": bg_ll,
            "log_likelihood_per_customer": bg_ll / buyers,
            "likelihood_gain_per_customer": bg_gain,
            "expected_repeat_purchases_in_sample": expected_in_sample,
            "observed_repeat_purchases": observed_in_sample,
            "in_sample_ratio": expected_in_sample / observed_in_sample if observed_in_sample else None,
            # one-time buyers are alive by the model's definition (P = 1): the repeat buyers' mean says more
            "mean_probability_alive": float(alive.mean()),
            "mean_probability_alive_repeat_buyers": float(alive[repeat_frequency].mean()) if repeat else None,
            "mean_dropout_probability": bg_params["a"] / (bg_params["a"] + bg_params["b"]),
            "fit_seconds": timings["bg_nbd_fit"],
        },
        "gamma_gamma": {
            "parameters": gg_params,
            "log_likelihood": gg_ll,
            "log_likelihood_per_customer": None if gg_ll is None else gg_ll / fitted,
            "likelihood_gain_per_customer": gg_gain,
            "repeat_buyers_fitted": fitted,
            "left_out_for_zero_spend": repeat - fitted,
            "population_mean_order_value": population_mean,
            "observed_mean_order_value": float(rm.mean()),
            # Gamma-Gamma assumes spend per purchase is independent of frequency; near 0 is what it needs.
            "frequency_monetary_correlation": correlation,
            "fit_seconds": timings["gamma_gamma_fit"],
        },
        "predict_seconds": timings["predict"],
        "notes": bg_notes + gg_notes + independence_notes(correlation, fitted),
    }
    return ClvResult(
        probability_alive=alive,
        expected_purchases=purchases,
        expected_average_order_value=order_value,
        clv=clv,
        report=report,
    )


def _correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r, None where it is undefined (one of them constant, e.g. a single-price store): NaN is no JSON."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def clv_columns(result: ClvResult) -> dict[str, pa.Array]:
    """The prediction columns of clv/, named as in the contract."""
    columns = {"probability_alive": pa.array(result.probability_alive, pa.float64())}
    for days, values in result.expected_purchases.items():
        columns[f"expected_purchases_{days}d"] = pa.array(values, pa.float64())
    columns["expected_average_order_value"] = pa.array(result.expected_average_order_value, pa.float64())
    columns["clv"] = pa.array(result.clv, pa.float64())
    return columns
