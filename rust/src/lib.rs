//! moc_fast's CPU engine. The algorithms live in plain Rust modules; the `python` feature adds
//! the PyO3 bindings below (argument conversion, GIL release, error mapping) as
//! `moc_fast._native`.

pub mod assign;
pub mod codes;
pub mod error;
pub mod kernel;
pub mod kmeans;
pub mod parallel;
pub mod size;
pub mod topk;

#[cfg(feature = "python")]
mod bindings {
    use crate::assign::{self as engine, Metric};
    use crate::error::Error;
    use crate::kmeans as km;
    use crate::{codes, parallel};
    use numpy::{
        IntoPyArray, PyArray1, PyArray2, PyArray3, PyArrayMethods, PyReadonlyArray1,
        PyReadonlyArray2, PyReadonlyArray3, PyReadonlyArrayDyn, PyUntypedArrayMethods,
    };
    use pyo3::exceptions::{PyTypeError, PyValueError};
    use pyo3::prelude::*;

    impl From<Error> for PyErr {
        fn from(e: Error) -> PyErr {
            match e {
                Error::Value(m) => PyValueError::new_err(m),
                Error::Type(m) => PyTypeError::new_err(m),
            }
        }
    }

    fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
        name: &str,
        a: &'a numpy::PyReadonlyArray<'_, T, D>,
    ) -> PyResult<&'a [T]> {
        a.as_slice()
            .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
    }

    type Codes<'py> = Bound<'py, PyArray1<i64>>;
    type Residual<'py> = Bound<'py, PyArray2<f32>>;
    type Scores<'py> = Bound<'py, PyArray1<f32>>;

    #[pyfunction]
    #[pyo3(signature = (x, codebook, metric="l2", num_threads=0))]
    fn assign<'py>(
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        codebook: PyReadonlyArray2<'py, f32>,
        metric: &str,
        num_threads: usize,
    ) -> PyResult<(Codes<'py>, Scores<'py>)> {
        let metric = Metric::parse(metric)?;
        let [n, d] = [x.shape()[0], x.shape()[1]];
        let [k, dc] = [codebook.shape()[0], codebook.shape()[1]];
        if d != dc {
            return Err(PyValueError::new_err(format!(
                "x has {d} columns but codebook has {dc}: expected the same dimension"
            )));
        }
        let (xs, cs) = (contiguous("x", &x)?, contiguous("codebook", &codebook)?);
        let (c, s) = py.detach(|| engine::assign(xs, n, d, cs, k, metric, num_threads))?;
        Ok((c.into_pyarray(py), s.into_pyarray(py)))
    }

    #[pyfunction]
    #[pyo3(signature = (x, codebooks, metric="l2", num_threads=0))]
    fn assign_multi<'py>(
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
        codebooks: PyReadonlyArray3<'py, f32>,
        metric: &str,
        num_threads: usize,
    ) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let metric = Metric::parse(metric)?;
        let [m, k, d] = [codebooks.shape()[0], codebooks.shape()[1], codebooks.shape()[2]];
        let shape = x.shape().to_vec();
        let shared = match shape.as_slice() {
            [_, xd] if *xd == d => true,
            [_, xm, xd] if *xm == m && *xd == d => false,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "x must be (N, M={m}, d={d}) or (N, d={d}) for codebooks of shape \
                     ({m}, {k}, {d}), got {shape:?}"
                )))
            }
        };
        let n = shape[0];
        let (xs, cs) = (contiguous("x", &x)?, contiguous("codebooks", &codebooks)?);
        let out = py.detach(|| engine::assign_multi(xs, n, m, d, shared, cs, k, metric, num_threads))?;
        out.into_pyarray(py).reshape([n, m])
    }

    #[pyfunction]
    #[pyo3(signature = (x, codebooks, num_threads=0))]
    fn assign_residual<'py>(
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        codebooks: PyReadonlyArray3<'py, f32>,
        num_threads: usize,
    ) -> PyResult<(Bound<'py, PyArray2<i64>>, Residual<'py>)> {
        let [n, d] = [x.shape()[0], x.shape()[1]];
        let [l, k, dc] = [codebooks.shape()[0], codebooks.shape()[1], codebooks.shape()[2]];
        if d != dc {
            return Err(PyValueError::new_err(format!(
                "x has {d} columns but codebooks have dimension {dc}: expected the same"
            )));
        }
        let (xs, cs) = (contiguous("x", &x)?, contiguous("codebooks", &codebooks)?);
        let (codes, res) = py.detach(|| engine::assign_residual(xs, n, d, cs, l, k, num_threads))?;
        Ok((codes.into_pyarray(py).reshape([n, l])?, res.into_pyarray(py).reshape([n, d])?))
    }

    type KMeansOut<'py> = (Bound<'py, PyArray2<f32>>, Codes<'py>, f64, usize);

    #[pyfunction]
    #[pyo3(signature = (x, k, iters=25, seed=0, init="k-means++", metric="l2", num_threads=0))]
    #[allow(clippy::too_many_arguments)]
    fn kmeans<'py>(
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        k: usize,
        iters: usize,
        seed: u64,
        init: &str,
        metric: &str,
        num_threads: usize,
    ) -> PyResult<KMeansOut<'py>> {
        let (init, metric) = (km::Init::parse(init)?, Metric::parse(metric)?);
        let [n, d] = [x.shape()[0], x.shape()[1]];
        let xs = contiguous("x", &x)?;
        let res = py.detach(|| km::kmeans(xs, n, d, k, iters, seed, init, metric, num_threads))?;
        let centroids = res.centroids.into_pyarray(py).reshape([k, d])?;
        Ok((centroids, res.labels.into_pyarray(py), res.inertia, res.iterations))
    }

    #[pyfunction]
    #[pyo3(signature = (x, centroids, iters=25, metric="l2", num_threads=0))]
    fn kmeans_from<'py>(
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        centroids: PyReadonlyArray2<'py, f32>,
        iters: usize,
        metric: &str,
        num_threads: usize,
    ) -> PyResult<KMeansOut<'py>> {
        let metric = Metric::parse(metric)?;
        let [n, d] = [x.shape()[0], x.shape()[1]];
        let [k, dc] = [centroids.shape()[0], centroids.shape()[1]];
        if d != dc {
            return Err(PyValueError::new_err(format!(
                "x has {d} columns but init centroids have {dc}: expected the same dimension"
            )));
        }
        let (xs, cs) = (contiguous("x", &x)?, contiguous("init", &centroids)?);
        let res = py.detach(|| km::kmeans_from(xs, n, d, cs, k, iters, metric, num_threads))?;
        let centroids = res.centroids.into_pyarray(py).reshape([k, d])?;
        Ok((centroids, res.labels.into_pyarray(py), res.inertia, res.iterations))
    }

    type RqOut<'py> = (Bound<'py, PyArray3<f32>>, Bound<'py, PyArray2<i64>>, f64);

    #[pyfunction]
    #[pyo3(signature = (x, levels, k, iters=25, seed=0, init="k-means++", num_threads=0))]
    #[allow(clippy::too_many_arguments)]
    fn rq_kmeans<'py>(
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        levels: usize,
        k: usize,
        iters: usize,
        seed: u64,
        init: &str,
        num_threads: usize,
    ) -> PyResult<RqOut<'py>> {
        let init = km::Init::parse(init)?;
        let [n, d] = [x.shape()[0], x.shape()[1]];
        let xs = contiguous("x", &x)?;
        let rq = py.detach(|| km::rq_kmeans(xs, n, d, levels, k, iters, seed, init, num_threads))?;
        Ok((
            rq.codebooks.into_pyarray(py).reshape([levels, k, d])?,
            rq.codes.into_pyarray(py).reshape([n, levels])?,
            rq.inertia,
        ))
    }

    #[pyfunction]
    fn pack_codes<'py>(
        py: Python<'py>,
        codes: PyReadonlyArray2<'py, i64>,
        bits: u32,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let m = codes.shape()[1];
        let cs = contiguous("codes", &codes)?;
        Ok(py.detach(|| codes::pack_codes(cs, m, bits))?.into_pyarray(py))
    }

    #[pyfunction]
    fn unpack_codes<'py>(
        py: Python<'py>,
        ids: PyReadonlyArray1<'py, u64>,
        m: usize,
        bits: u32,
    ) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let n = ids.shape()[0];
        let is = contiguous("ids", &ids)?;
        let out = py.detach(|| codes::unpack_codes(is, m, bits))?;
        out.into_pyarray(py).reshape([n, m])
    }

    #[pyfunction]
    fn resolve_collisions<'py>(
        py: Python<'py>,
        codes: PyReadonlyArray2<'py, i64>,
    ) -> PyResult<(Bound<'py, PyArray2<i64>>, usize)> {
        let [n, m] = [codes.shape()[0], codes.shape()[1]];
        let cs = contiguous("codes", &codes)?;
        let (out, largest) = py.detach(|| codes::resolve_collisions(cs, m))?;
        Ok((out.into_pyarray(py).reshape([n, m + 1])?, largest))
    }

    type TopK<'py> = (Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>);

    /// Exact top-k of items scored by the sum of their codes' log-probabilities.
    #[pyfunction]
    #[pyo3(signature = (logp, codes, k, num_threads=0))]
    fn topk_codes<'py>(
        py: Python<'py>,
        logp: PyReadonlyArray3<'py, f32>,
        codes: &Bound<'py, PyAny>,
        k: usize,
        num_threads: usize,
    ) -> PyResult<TopK<'py>> {
        let [b, m, kk] = [logp.shape()[0], logp.shape()[1], logp.shape()[2]];
        let lp = contiguous("logp", &logp)?;
        macro_rules! run {
            ($t:ty) => {{
                let c = codes.extract::<PyReadonlyArray2<'py, $t>>()?;
                if c.shape()[1] != m {
                    return Err(PyValueError::new_err(format!(
                        "codes must be (N, M = {m}) like logp's M, got {:?}", c.shape()
                    )));
                }
                let n = c.shape()[0];
                let cs = contiguous("codes", &c)?;
                py.detach(|| crate::topk::topk_codes(lp, b, m, kk, cs, n, k, num_threads))?
            }};
        }
        let (items, scores) = if codes.extract::<PyReadonlyArray2<'py, u8>>().is_ok() {
            run!(u8)
        } else if codes.extract::<PyReadonlyArray2<'py, u16>>().is_ok() {
            run!(u16)
        } else if codes.extract::<PyReadonlyArray2<'py, i32>>().is_ok() {
            run!(i32)
        } else if codes.extract::<PyReadonlyArray2<'py, i64>>().is_ok() {
            run!(i64)
        } else {
            return Err(PyTypeError::new_err(
                "codes must be a 2-D uint8, uint16, int32 or int64 array",
            ));
        };
        let kk_out = items.len().checked_div(b).unwrap_or(0);
        Ok((items.into_pyarray(py).reshape([b, kk_out])?, scores.into_pyarray(py).reshape([b, kk_out])?))
    }

    #[pyfunction]
    fn code_histograms<'py>(
        py: Python<'py>,
        codes: PyReadonlyArray2<'py, i64>,
        codebook_size: usize,
    ) -> PyResult<(Bound<'py, PyArray2<i64>>, usize, usize)> {
        let m = codes.shape()[1];
        let cs = contiguous("codes", &codes)?;
        let (hist, unique, largest) = py.detach(|| codes::code_histograms(cs, m, codebook_size))?;
        Ok((hist.into_pyarray(py).reshape([m, codebook_size])?, unique, largest))
    }

    /// Threads a call with num_threads=0 uses.
    #[pyfunction]
    fn default_num_threads() -> usize {
        parallel::default_threads()
    }

    /// Name of the distance kernel every call in this process uses ("avx512", "avx2", "neon"
    /// or "portable"); a ValueError where MOC_FAST_KERNEL forces one this CPU cannot run.
    #[pyfunction]
    fn kernel_name() -> PyResult<&'static str> {
        Ok(crate::kernel::selected()?.name())
    }

    /// The kernels this CPU can run, fastest first (the values MOC_FAST_KERNEL accepts here).
    #[pyfunction]
    fn available_kernels() -> Vec<&'static str> {
        crate::kernel::Isa::available().iter().map(|k| k.name()).collect()
    }

    #[pymodule]
    fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
        parallel::record_pid();
        m.add_function(wrap_pyfunction!(assign, m)?)?;
        m.add_function(wrap_pyfunction!(assign_multi, m)?)?;
        m.add_function(wrap_pyfunction!(assign_residual, m)?)?;
        m.add_function(wrap_pyfunction!(kmeans, m)?)?;
        m.add_function(wrap_pyfunction!(rq_kmeans, m)?)?;
        m.add_function(wrap_pyfunction!(pack_codes, m)?)?;
        m.add_function(wrap_pyfunction!(unpack_codes, m)?)?;
        m.add_function(wrap_pyfunction!(resolve_collisions, m)?)?;
        m.add_function(wrap_pyfunction!(topk_codes, m)?)?;
        m.add_function(wrap_pyfunction!(code_histograms, m)?)?;
        m.add_function(wrap_pyfunction!(kmeans_from, m)?)?;
        m.add_function(wrap_pyfunction!(default_num_threads, m)?)?;
        m.add_function(wrap_pyfunction!(kernel_name, m)?)?;
        m.add_function(wrap_pyfunction!(available_kernels, m)?)?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
