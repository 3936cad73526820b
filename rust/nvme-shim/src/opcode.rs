//! Admin and I/O opcodes, feature identifiers and Identify CNS values.
//!
//! The low two bits of every opcode give the data transfer direction (NVMe
//! "opcode convention"), which the vendor command set follows as well.

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Doorbell Buffer Config (shadow doorbells).
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7c;
    /// First vendor-specific admin opcode.
    pub const VENDOR_FIRST: u8 = 0xc0;
}

/// NVM command set I/O opcodes.
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Feature identifiers for Set/Get Features.
pub mod feature {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MANAGEMENT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Interrupt Vector Configuration.
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
}

/// Identify Controller or Namespace Structure (CNS) values.
pub mod cns {
    /// Identify Namespace for the NSID in the command.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list (IDs greater than the NSID in the command).
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NAMESPACE_DESCRIPTORS: u8 = 0x03;
    /// I/O Command Set specific Identify Controller (CSI in CDW11 31:24).
    /// For the NVM command set (CSI 0) every field of the 4096-byte
    /// structure reported by dpublk devices is 0: no limits beyond MDTS.
    pub const CONTROLLER_CSI: u8 = 0x06;
}

/// Data transfer direction encoded in an opcode's two low bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    /// No data transfer.
    None,
    /// Host to controller.
    HostToController,
    /// Controller to host.
    ControllerToHost,
    /// Both directions.
    Bidirectional,
}

/// Returns the data transfer direction of `opcode`.
pub const fn data_direction(opcode: u8) -> DataDirection {
    match opcode & 0x3 {
        0 => DataDirection::None,
        1 => DataDirection::HostToController,
        2 => DataDirection::ControllerToHost,
        _ => DataDirection::Bidirectional,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_follow_convention() {
        assert_eq!(data_direction(io::WRITE), DataDirection::HostToController);
        assert_eq!(data_direction(io::READ), DataDirection::ControllerToHost);
        assert_eq!(data_direction(io::FLUSH), DataDirection::None);
        assert_eq!(
            data_direction(admin::IDENTIFY),
            DataDirection::ControllerToHost
        );
        assert_eq!(
            data_direction(admin::GET_LOG_PAGE),
            DataDirection::ControllerToHost
        );
        assert_eq!(data_direction(0x03), DataDirection::Bidirectional);
        assert_eq!(admin::DOORBELL_BUFFER_CONFIG, 0x7c);
        assert_eq!(io::WRITE_ZEROES, 0x08);
        assert_eq!(io::DATASET_MANAGEMENT, 0x09);
    }
}
