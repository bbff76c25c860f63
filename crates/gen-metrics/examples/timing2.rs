use std::time::Instant;
use faer::{Mat, Accum, Par, Side};
use faer::linalg::matmul::triangular::{self, BlockStructure};
fn main() {
    let n = 10000; let d = 2048;
    let x = Mat::<f64>::from_fn(n, d, |i, j| ((i * 7 + j * 13) % 101) as f64 / 101.0 + (i as f64 * 0.001).sin());
    let par = Par::rayon(0);
    let mut g = Mat::<f64>::zeros(d, d);
    let t = Instant::now();
    faer::linalg::matmul::matmul(g.as_mut(), Accum::Replace, x.transpose(), x.as_ref(), 1.0, par);
    println!("full gemm xtx (col-major x) {:?}", t.elapsed());
    let t = Instant::now();
    triangular::matmul(g.as_mut(), BlockStructure::TriangularLower, Accum::Replace, x.transpose(), BlockStructure::Rectangular, x.as_ref(), BlockStructure::Rectangular, 1.0, par);
    println!("tri gemm xtx {:?}", t.elapsed());
    // row-major x
    let xr = x.transpose().to_owned(); // d x n col-major == n x d row-major
    let xrv = xr.transpose();
    let t = Instant::now();
    triangular::matmul(g.as_mut(), BlockStructure::TriangularLower, Accum::Replace, xrv.transpose(), BlockStructure::Rectangular, xrv, BlockStructure::Rectangular, 1.0, par);
    println!("tri gemm xtx row-major {:?}", t.elapsed());
    let s = Mat::<f64>::from_fn(d, d, |i, j| g[(i, j)] / n as f64 + if i == j { 1.0 } else { 0.0 });
    let t = Instant::now();
    let ev = s.self_adjoint_eigenvalues(Side::Lower).unwrap();
    println!("eigvals {:?} {}", t.elapsed(), ev[0]);
    let t = Instant::now();
    let l = s.llt(Side::Lower).unwrap();
    println!("llt {:?}", t.elapsed());
    let t = Instant::now();
    let mut w = Mat::<f64>::zeros(d, d);
    triangular::matmul(w.as_mut(), BlockStructure::Rectangular, Accum::Replace, s.as_ref(), BlockStructure::Rectangular, l.L(), BlockStructure::TriangularLower, 1.0, par);
    println!("trmm {:?}", t.elapsed());
    let t = Instant::now();
    faer::linalg::matmul::matmul(w.as_mut(), Accum::Replace, s.as_ref(), s.as_ref(), 1.0, par);
    println!("gemm dxd {:?}", t.elapsed());
}
