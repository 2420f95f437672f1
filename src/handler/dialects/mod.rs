pub mod infotext;
