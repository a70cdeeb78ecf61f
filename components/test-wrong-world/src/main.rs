//! A command component, not a service: deploying it must be refused.
fn main() {
    println!("this component exports wasi:cli/run, not wasi:http/incoming-handler");
}
