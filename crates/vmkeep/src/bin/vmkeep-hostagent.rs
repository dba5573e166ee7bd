//! `vmkeep-hostagent NAME [--foreground]`: the host agent of one instance,
//! as a lean binary of its own (see `vmkeep::hostagent::binary`).

fn main() {
    std::process::exit(vmkeep::hostagent::binary::main(std::env::args_os().skip(1)));
}
